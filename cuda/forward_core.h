// The arithmetic of the forward-pass kernels (cuda/forward_ops.cu), one row, element or slot at a
// time, as host-device functions. The kernels only map threads to rows, elements and slots and call
// these; tests/test_cuda_forward.cpp runs the same functions on the CPU, with the kernels' thread
// mapping and reduction order emulated, and compares them with sim/kernels/ref/forward_ops.
//
// Reductions (sums of squares, softmax denominators) are split over n_lanes threads: lane j takes
// elements j, j + n_lanes, ..., and the lanes' partials are added in a binary tree
// (tree_reduce_sum). That order differs from ref's sequential loop, which is the one place where
// these kernels and ref may round differently; everything else uses ref's operation order.
#pragma once

#include <math.h>

#include <cstdint>

#include "sim/base/hd.h"
#include "sim/base/rope.h"

namespace kvsim::cuda::core {

// Threads per block of the kernels that reduce (powers of two; the host emulation uses the same).
constexpr int kRowLanes = 256;      // rmsnorm: one block per row
constexpr int kAttnLanes = 128;     // attention: one block per (query, head), one thread per d up to 128
constexpr int kArgmaxLanes = 1024;  // argmax: one block

// ---- reductions ----------------------------------------------------------------------------

// Lane `lane` of n_lanes: the sum of x[i]^2 for i = lane, lane + n_lanes, ... < n.
KVSIM_HD float sumsq_strided(const float* x, int64_t n, int lane, int n_lanes) {
  float s = 0.0f;
  for (int64_t i = lane; i < n; i += n_lanes) s += x[i] * x[i];
  return s;
}

// One step of the tree: the lanes below `half` add the partial of lane + half. Running it for
// half = n_lanes/2, n_lanes/4, ..., 1 (n_lanes a power of two) leaves the total in red[0].
KVSIM_HD void tree_step_sum(float* red, int lane, int half) {
  if (lane < half) red[lane] += red[lane + half];
}
KVSIM_HD void tree_step_max(float* red, int lane, int half) {
  if (lane < half && red[lane + half] > red[lane]) red[lane] = red[lane + half];
}

// ---- RMSNorm ---------------------------------------------------------------------------------

// 1 / sqrt(mean(x^2) + eps) from the sum of squares of a row of n.
KVSIM_HD float rms_inv(float sumsq, int64_t n, float eps) { return 1.0f / sqrtf(sumsq / static_cast<float>(n) + eps); }
// Element i of the normalised row: ref's x * scale * g (same order).
KVSIM_HD float rmsnorm_elem(float x, float scale, float g) { return x * scale * g; }

// ---- RoPE ------------------------------------------------------------------------------------

// Frequency of pair i of D (sim/base/rope.h): inv_freq[i] when given, else theta^(-2i/D), in double.
KVSIM_HD double rope_freq(int64_t i, int64_t D, double theta, const float* inv_freq) {
  return inv_freq ? static_cast<double>(inv_freq[i])
                  : pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(D));
}

// Rotates pair i of one head vector (D floats) at position pos, exactly as apply_rope does:
// angle in double, cos and sin rounded to float, rotation in float.
KVSIM_HD void rope_pair(float* row, int64_t i, int64_t D, int64_t pos, double theta, RopeStyle style,
                        const float* inv_freq) {
  if (style == RopeStyle::none) return;
  const int64_t half = D / 2;
  const double a = static_cast<double>(pos) * rope_freq(i, D, theta, inv_freq);
  const float c = static_cast<float>(cos(a)), s = static_cast<float>(sin(a));
  const int64_t i0 = style == RopeStyle::interleaved ? 2 * i : i;
  const int64_t i1 = style == RopeStyle::interleaved ? 2 * i + 1 : i + half;
  const float x0 = row[i0], x1 = row[i1];
  row[i0] = x0 * c - x1 * s;
  row[i1] = x0 * s + x1 * c;
}

// ---- SwiGLU ----------------------------------------------------------------------------------

// silu(gate) * up with silu(x) = x / (1 + e^-x), ref's operation order.
KVSIM_HD float swiglu_elem(float gate, float up) { return gate / (1.0f + expf(-gate)) * up; }

// ---- attention -------------------------------------------------------------------------------
// One (query, head) is one block: the logits of all slots go to shared memory (attn_logit, one
// slot per thread), their max and the sum of exponentials are tree-reduced, the weights are
// normalised in place (attn_weight), and each thread then sums one output dimension over the
// slots in slot order (attn_out_elem) - ref's order, with ref's normalise-then-accumulate.

constexpr float kNegInf = -__builtin_huge_valf();

// Logit of slot s for the query at position p: q.k / sqrt(D) + bias, or -inf when the slot's
// position is after p (pos == nullptr: slot s stands for position s, the full cache).
KVSIM_HD float attn_logit(const float* q,      // [D]
                          const float* k,      // [n, D] (this head's slots)
                          const float* bias,   // [n] or nullptr
                          const int64_t* pos,  // [n] or nullptr
                          int64_t s, int64_t D, int64_t p, float scale) {
  const int64_t ps = pos ? pos[s] : s;
  if (ps > p) return kNegInf;
  const float* kr = k + s * D;
  float dot = 0.0f;
  for (int64_t d = 0; d < D; ++d) dot += q[d] * kr[d];
  return dot * scale + (bias ? bias[s] : 0.0f);
}

// exp(logit - max), 0 when nothing is visible (max = -inf), as ref::softmax.
KVSIM_HD float attn_exp(float logit, float mx) { return mx == kNegInf ? 0.0f : expf(logit - mx); }

// Lane's partial of the softmax denominator over its strided slots; w holds the exponentials.
KVSIM_HD float sum_strided(const float* w, int64_t n, int lane, int n_lanes) {
  float s = 0.0f;
  for (int64_t i = lane; i < n; i += n_lanes) s += w[i];
  return s;
}

// The normalised weight (ref divides each exponential by the sum; with nothing visible, 0).
KVSIM_HD float attn_weight(float e, float sum, float mx) { return mx == kNegInf ? 0.0f : e / sum; }

// Output dimension d: sum over slots of w[s] * v[s, d], in slot order, skipping zero weights.
KVSIM_HD float attn_out_elem(const float* w,  // [n] normalised weights
                             const float* v,  // [n, D]
                             int64_t n, int64_t D, int64_t d) {
  float acc = 0.0f;
  for (int64_t s = 0; s < n; ++s) {
    const float p = w[s];
    if (p == 0.0f) continue;
    acc += p * v[s * D + d];
  }
  return acc;
}

// ---- the runner's device KV cache ------------------------------------------------------------

// Element i of a token-major block [T, Hkv, D] (keys or values after RoPE) goes to this index of
// the cache [Hkv, cap, D], whose row pos0 + t holds token t of the block.
KVSIM_HD int64_t kv_cache_index(int64_t i, int64_t Hkv, int64_t D, int64_t cap, int64_t pos0) {
  const int64_t d = i % D, g = (i / D) % Hkv, t = i / (D * Hkv);
  return (g * cap + pos0 + t) * D + d;
}

// ---- argmax ----------------------------------------------------------------------------------

// Is (vb, ib) a better argmax candidate than (va, ia)? Larger value, then lower index (ref's rule:
// the first maximum wins).
KVSIM_HD bool argmax_better(float vb, int64_t ib, float va, int64_t ia) { return vb > va || (vb == va && ib < ia); }

// One tree step of the argmax over lanes' candidate indices (-1: none), lanes below `half`.
KVSIM_HD void tree_step_argmax(const float* x, int64_t* idx, int lane, int half) {
  if (lane >= half) return;
  const int64_t ia = idx[lane], ib = idx[lane + half];
  if (ib >= 0 && (ia < 0 || argmax_better(x[ib], ib, x[ia], ia))) idx[lane] = ib;
}

// Lane's best index over i = lane, lane + n_lanes, ... < n; -1 when the lane has none.
KVSIM_HD int64_t argmax_strided(const float* x, int64_t n, int lane, int n_lanes) {
  int64_t best = -1;
  for (int64_t i = lane; i < n; i += n_lanes)
    if (best < 0 || x[i] > x[best]) best = i;
  return best;
}

}  // namespace kvsim::cuda::core
