// Forward-pass ops of a Llama-family decoder on the CPU: the contract once, declared for ref
// (sim/kernels/ref/forward_ops.cpp, plain loops, the ground truth) and omp (sim/kernels/omp/,
// OpenBLAS SGEMM and OpenMP). The GPU twins work on device buffers: cuda/forward_ops.h. Activations are token-major:
// row t of x is token t.
#pragma once

#include <cstdint>

#include "sim/base/kv_cache.h"
#include "sim/base/rope.h"

namespace kvsim {

// y = x W^T (+ b): a PyTorch Linear with W stored [N, K] (out, in).
using Matmul = void(const float* x,  // [T, K]
                    const float* w,  // [N, K]
                    const float* b,  // [N] or nullptr
                    float* y,        // [T, N]
                    int64_t T, int64_t K, int64_t N);

// y = x / sqrt(mean(x^2) + eps) * g, per row.
using Rmsnorm = void(const float* x,  // [T, n]
                     const float* g,  // [n]
                     float* y,        // [T, n]
                     int64_t T, int64_t n, float eps);

// RoPE on every head of every row, token t at position pos0 + t (sim/base/rope.h).
using Rope = void(float* x,  // [T, n_heads, D]
                  int64_t T, int64_t n_heads, int64_t D, int64_t pos0, double theta, RopeStyle style,
                  const float* inv_freq);  // [D/2] or nullptr

// In place, numerically stable (subtracts the max).
using Softmax = void(float* x, int64_t n);

// out = silu(gate) * up, silu(x) = x / (1 + e^-x).
using Swiglu = void(const float* gate, const float* up, float* out, int64_t n);

// Causal attention of T queries at positions pos0 .. pos0+T-1 over each KV head's slots:
// query head h reads kv[h / G] (G = H / Hkv); logits q.k / sqrt(D) + bias; slot s is visible to
// the query at position p when kv.pos[s] <= p.
using Attention = void(const float* q,    // [T, H, D]
                       const KvView* kv,  // [Hkv]
                       float* o,          // [T, H, D]
                       int64_t T, int64_t H, int64_t Hkv, int64_t D, int64_t pos0);

// Index of the largest value; ties go to the lowest index.
using Argmax = int64_t(const float* x, int64_t n);

#define KVSIM_DECLARE_FORWARD_OPS \
  Matmul matmul;                  \
  Rmsnorm rmsnorm;                \
  Rope rope;                      \
  Softmax softmax;                \
  Swiglu swiglu;                  \
  Attention attention;            \
  Argmax argmax;
namespace ref {
KVSIM_DECLARE_FORWARD_OPS
}  // namespace ref
namespace omp {
KVSIM_DECLARE_FORWARD_OPS
}  // namespace omp
#undef KVSIM_DECLARE_FORWARD_OPS

}  // namespace kvsim
