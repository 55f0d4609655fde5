// Shared by tests/test_cuda_forward*.cpp and the harness (tests/backend_harness.h): seeded data,
// the forward kernels of cuda/forward_ops.cu emulated on the CPU - each kernel's thread mapping
// and reduction tree, lane by lane, around the functions of cuda/forward_core.h - and a GQA
// attention case in the runner's cache layout.
#pragma once

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "cuda/forward_core.h"
#include "sim/base/kv_cache.h"

namespace kvsim_test::cuda_fwd {

namespace core = kvsim::cuda::core;
using kvsim::KvView;
using kvsim::RopeStyle;

inline std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// The kernels' block reductions: lanes' strided partials, then the tree (cuda/forward_ops.cu).
inline void emulate_tree_sum(std::vector<float>& red) {
  for (int half = static_cast<int>(red.size()) / 2; half > 0; half /= 2)
    for (int lane = 0; lane < half; ++lane) core::tree_step_sum(red.data(), lane, half);
}
inline void emulate_tree_max(std::vector<float>& red) {
  for (int half = static_cast<int>(red.size()) / 2; half > 0; half /= 2)
    for (int lane = 0; lane < half; ++lane) core::tree_step_max(red.data(), lane, half);
}

// rmsnorm_kernel: one block of n_lanes per row.
inline void emulate_rmsnorm(const float* x, const float* g, float* y, int64_t T, int64_t n, float eps,
                            int n_lanes = core::kRowLanes) {
  for (int64_t t = 0; t < T; ++t) {
    std::vector<float> red(static_cast<size_t>(n_lanes));
    for (int lane = 0; lane < n_lanes; ++lane)
      red[static_cast<size_t>(lane)] = core::sumsq_strided(x + t * n, n, lane, n_lanes);
    emulate_tree_sum(red);
    const float scale = core::rms_inv(red[0], n, eps);
    for (int64_t i = 0; i < n; ++i) y[t * n + i] = core::rmsnorm_elem(x[t * n + i], scale, g[i]);
  }
}

// rope_kernel: one thread per (row, pair).
inline void emulate_rope(float* x, int64_t T, int64_t heads, int64_t D, int64_t pos0, double theta, RopeStyle style,
                         const float* inv_freq) {
  const int64_t half = D / 2;
  for (int64_t j = 0; j < T * heads * half; ++j) {
    const int64_t i = j % half, row = j / half, t = row / heads;
    core::rope_pair(x + row * D, i, D, pos0 + t, theta, style, inv_freq);
  }
}

// attention_kernel: one block of n_lanes per (t, h); k, v [Hkv, head_stride / D, D].
inline void emulate_attention(const float* q, const float* k, const float* v, const float* bias, const int64_t* pos,
                              float* o, int64_t T, int64_t H, int64_t Hkv, int64_t D, int64_t n, int64_t head_stride,
                              int64_t pos0, int n_lanes = core::kAttnLanes) {
  const int64_t G = H / Hkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::vector<float> w(static_cast<size_t>(n)), red(static_cast<size_t>(n_lanes));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / G;
      const float* kh = k + g * head_stride;
      const float* bh = bias ? bias + g * n : nullptr;
      const int64_t* ph = pos ? pos + g * n : nullptr;
      for (int lane = 0; lane < n_lanes; ++lane) {
        float mx = core::kNegInf;
        for (int64_t s = lane; s < n; s += n_lanes) {
          w[static_cast<size_t>(s)] = core::attn_logit(q + (t * H + h) * D, kh, bh, ph, s, D, pos0 + t, scale);
          if (w[static_cast<size_t>(s)] > mx) mx = w[static_cast<size_t>(s)];
        }
        red[static_cast<size_t>(lane)] = mx;
      }
      emulate_tree_max(red);
      const float mx = red[0];
      for (int64_t s = 0; s < n; ++s) w[static_cast<size_t>(s)] = core::attn_exp(w[static_cast<size_t>(s)], mx);
      for (int lane = 0; lane < n_lanes; ++lane)
        red[static_cast<size_t>(lane)] = core::sum_strided(w.data(), n, lane, n_lanes);
      emulate_tree_sum(red);
      for (int64_t s = 0; s < n; ++s)
        w[static_cast<size_t>(s)] = core::attn_weight(w[static_cast<size_t>(s)], red[0], mx);
      for (int64_t d = 0; d < D; ++d)
        o[(t * H + h) * D + d] = core::attn_out_elem(w.data(), v + g * head_stride, n, D, d);
    }
}

// argmax_kernel: one block of n_lanes.
inline int64_t emulate_argmax(const float* x, int64_t n, int n_lanes = core::kArgmaxLanes) {
  std::vector<int64_t> idx(static_cast<size_t>(n_lanes));
  for (int lane = 0; lane < n_lanes; ++lane) idx[static_cast<size_t>(lane)] = core::argmax_strided(x, n, lane, n_lanes);
  for (int half = n_lanes / 2; half > 0; half /= 2)
    for (int lane = 0; lane < half; ++lane) core::tree_step_argmax(x, idx.data(), lane, half);
  return idx[0];
}

// A GQA cache case: Hkv heads of n slots, each head's rows at stride head_stride (>= n D, as the
// runner's [Hkv, seq_len, D] cache), with or without a bias and out-of-order positions.
struct AttnCase {
  int64_t T, H, Hkv, D, n, head_stride, pos0;
  std::vector<float> q, k, v, bias;
  std::vector<int64_t> pos, full_pos;  // full_pos: 0 .. n-1, what pos == nullptr means
  std::vector<KvView> views;
  AttnCase(int64_t T_, int64_t H_, int64_t Hkv_, int64_t D_, int64_t n_, int64_t pos0_, bool with_bias, uint64_t seed)
      : T(T_), H(H_), Hkv(Hkv_), D(D_), n(n_), head_stride((n_ + 3) * D_), pos0(pos0_) {
    q = randn(static_cast<size_t>(T * H * D), seed, 2.0f);
    k = randn(static_cast<size_t>(Hkv * head_stride), seed + 1, 2.0f);
    v = randn(static_cast<size_t>(Hkv * head_stride), seed + 2);
    if (with_bias) {
      bias = randn(static_cast<size_t>(Hkv * n), seed + 3);
      pos.resize(static_cast<size_t>(Hkv * n));
      for (int64_t g = 0; g < Hkv; ++g)
        for (int64_t s = 0; s < n; ++s) pos[static_cast<size_t>(g * n + s)] = (s * 7 + g) % n;
    }
    full_pos.resize(static_cast<size_t>(n));
    for (int64_t s = 0; s < n; ++s) full_pos[static_cast<size_t>(s)] = s;
    for (int64_t g = 0; g < Hkv; ++g) views.push_back(view(g));
  }
  KvView view(int64_t g) {
    KvView kv;
    kv.k = k.data() + g * head_stride;
    kv.v = v.data() + g * head_stride;
    kv.n = n;
    kv.bias = bias.empty() ? nullptr : bias.data() + g * n;
    kv.pos = pos.empty() ? full_pos.data() : pos.data() + g * n;
    return kv;
  }
  const float* bias_ptr() const { return bias.empty() ? nullptr : bias.data(); }
  const int64_t* pos_ptr() const { return pos.empty() ? nullptr : pos.data(); }
};

}  // namespace kvsim_test::cuda_fwd
