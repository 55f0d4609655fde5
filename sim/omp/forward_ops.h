// OpenMP + OpenBLAS twins of sim/ref/forward_ops.h (same names, same shapes, same semantics).
// matmul uses cblas_sgemm; the other ops split rows (or rows x heads) across OpenMP threads.
#pragma once

#include <cstdint>

#include "sim/kv_cache.h"
#include "sim/rope.h"

namespace kvsim::omp {

void matmul(const float* x,  // [T, K]
            const float* w,  // [N, K]
            const float* b,  // [N] or nullptr
            float* y,        // [T, N]
            int64_t T, int64_t K, int64_t N);
void rmsnorm(const float* x,  // [T, n]
             const float* g,  // [n]
             float* y,        // [T, n]
             int64_t T, int64_t n, float eps);
void rope(float* x,  // [T, n_heads, D]
          int64_t T, int64_t n_heads, int64_t D, int64_t pos0, double theta, RopeStyle style,
          const float* inv_freq);  // [D/2] or nullptr
void softmax(float* x, int64_t n);
void swiglu(const float* gate, const float* up, float* out, int64_t n);
void attention(const float* q,    // [T, H, D]
               const KvView* kv,  // [Hkv]
               float* o,          // [T, H, D]
               int64_t T, int64_t H, int64_t Hkv, int64_t D, int64_t pos0);
int64_t argmax(const float* x, int64_t n);

}  // namespace kvsim::omp
