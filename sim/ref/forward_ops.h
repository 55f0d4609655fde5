// Forward-pass ops of a Llama-family decoder, plain loops: the ground truth that sim/omp and
// cuda/ twins (same names) are tested against. Activations are token-major: row t of x is token t.
#pragma once

#include <cstdint>

#include "sim/kv_cache.h"
#include "sim/rope.h"

namespace kvsim::ref {

// y = x W^T (+ b): a PyTorch Linear with W stored [N, K] (out, in).
void matmul(const float* x,  // [T, K]
            const float* w,  // [N, K]
            const float* b,  // [N] or nullptr
            float* y,        // [T, N]
            int64_t T, int64_t K, int64_t N);

// y = x / sqrt(mean(x^2) + eps) * g, per row.
void rmsnorm(const float* x,  // [T, n]
             const float* g,  // [n]
             float* y,        // [T, n]
             int64_t T, int64_t n, float eps);

// RoPE on every head of every row, token t at position pos0 + t (sim/rope.h).
void rope(float* x,  // [T, n_heads, D]
          int64_t T, int64_t n_heads, int64_t D, int64_t pos0, double theta, RopeStyle style,
          const float* inv_freq);  // [D/2] or nullptr

// In place, numerically stable (subtracts the max).
void softmax(float* x, int64_t n);

// out = silu(gate) * up, silu(x) = x / (1 + e^-x).
void swiglu(const float* gate, const float* up, float* out, int64_t n);

// Causal attention of T queries at positions pos0 .. pos0+T-1 over each KV head's slots:
// query head h reads kv[h / G] (G = H / Hkv); logits q.k / sqrt(D) + bias; slot s is visible to
// the query at position p when kv.pos[s] <= p.
void attention(const float* q,      // [T, H, D]
               const KvView* kv,    // [Hkv]
               float* o,            // [T, H, D]
               int64_t T, int64_t H, int64_t Hkv, int64_t D, int64_t pos0);

// Index of the largest value; ties go to the lowest index.
int64_t argmax(const float* x, int64_t n);

}  // namespace kvsim::ref
