// Reference attention statistics on the GPU: the twin of sim/ref/attn_stats.h (same contract, host
// pointers in and out). A FlashAttention-style causal kernel: a thread block holds 64 query rows of
// one head (one thread per row), streams 64-key tiles of K and V through shared memory and keeps an
// online softmax, the entropy sum and the top-K per row; T x T is never materialized. The per-row
// arithmetic is cuda/attn_stats_core.h, shared with the host emulation the tests run.
#pragma once

#include <cstdint>

namespace kvsim::cuda {

// Shapes as kvsim::ref::attn_stats; K <= 64, D <= 256 (UsageError otherwise).
void attn_stats(const float* q,   // [H, T, D]
                const float* k,   // [Hkv, T, D]
                const float* v,   // [Hkv, T, D]
                int64_t H, int64_t Hkv, int64_t T, int64_t D, int64_t K,
                float* o,         // [H, T, D]
                double* lse,      // [H, T]
                float* entropy,   // [H, T]
                int32_t* top_pos, // [H, T, K]
                float* top_w);    // [H, T, K]

// As kvsim::ref::prompt_colsums: one thread per (head, prompt key).
void prompt_colsums(const float* q,    // [H, T, D]
                    const float* k,    // [Hkv, T, D]
                    const double* lse, // [H, T]
                    int64_t H, int64_t Hkv, int64_t T, int64_t D, int64_t P,
                    float* colsum);    // [H, P]

}  // namespace kvsim::cuda
