// Exact attention statistics (design.md §3 "reference statistics"): the contract once, declared
// for every backend. For every query head h and step t = 0..T-1, the exact causal attention of q_t
// over keys 0..t, computed tile by tile with an online softmax (T x T never exists). ref
// (sim/kernels/ref/attn_stats.cpp) is the plain-loop ground truth, omp (sim/kernels/omp/) its
// OpenMP twin, cuda (cuda/attn_stats.cu) a FlashAttention-style kernel; the per-row arithmetic
// shared by ref and cuda is sim/kernels/attn_stats_core.h.
#pragma once

#include <cstdint>

namespace kvsim {

// Shapes: G = H / Hkv; query head h reads KV head h / G. Logits are q·k / sqrt(D). cuda needs
// K <= 64 and D <= 256 (UsageError otherwise).
using AttnStats = void(const float* q,  // [H, T, D]
                       const float* k,  // [Hkv, T, D]
                       const float* v,  // [Hkv, T, D]
                       int64_t H, int64_t Hkv, int64_t T, int64_t D, int64_t K,
                       float* o,          // [H, T, D]   attention output
                       double* lse,       // [H, T]      log-sum-exp of the scaled logits (double: mass sums need it)
                       float* entropy,    // [H, T]      Shannon entropy of the row, nats
                       int32_t* top_pos,  // [H, T, K]   top-K positions, best first (-1 past t + 1)
                       float* top_w);     // [H, T, K]   their attention weights (0 past t + 1)

// colsum[h, i] = sum_{j=i}^{P-1} exp(q_j·k_i / sqrt(D) - lse[h, j]): the prompt's causal attention
// summed over its queries (h2o's starting scores), using the lse of attn_stats.
using PromptColsums = void(const float* q,     // [H, T, D]
                           const float* k,     // [Hkv, T, D]
                           const double* lse,  // [H, T]
                           int64_t H, int64_t Hkv, int64_t T, int64_t D, int64_t P,
                           float* colsum);  // [H, P]

namespace ref {
AttnStats attn_stats;
PromptColsums prompt_colsums;
}  // namespace ref
namespace omp {
AttnStats attn_stats;
PromptColsums prompt_colsums;
}  // namespace omp
namespace cuda {
AttnStats attn_stats;  // NotCompiled without CUDA
PromptColsums prompt_colsums;
}  // namespace cuda

}  // namespace kvsim
