// Reference attention statistics (design.md §3), plain loops: the ground truth for sim/omp and cuda/.
// For every query head h and step t = 0..T-1, the exact causal attention of q_t over keys 0..t,
// computed tile by tile with an online softmax (never materializing T x T).
#pragma once

#include <cstdint>

namespace kvsim::ref {

// Shapes: G = H / Hkv; query head h reads KV head h / G. Logits are q·k / sqrt(D).
void attn_stats(const float* q,   // [H, T, D]
                const float* k,   // [Hkv, T, D]
                const float* v,   // [Hkv, T, D]
                int64_t H, int64_t Hkv, int64_t T, int64_t D, int64_t K,
                float* o,         // [H, T, D]   attention output
                double* lse,      // [H, T]      log-sum-exp of the scaled logits (double: mass sums need it)
                float* entropy,   // [H, T]      Shannon entropy of the row, nats
                int32_t* top_pos, // [H, T, K]   top-K positions, best first (-1 past t + 1)
                float* top_w);    // [H, T, K]   their attention weights (0 past t + 1)

// colsum[h, i] = sum_{j=i}^{P-1} exp(q_j·k_i / sqrt(D) - lse[h, j]): the prompt's causal attention
// summed over its queries (h2o's starting scores), using the lse of attn_stats.
void prompt_colsums(const float* q,    // [H, T, D]
                    const float* k,    // [Hkv, T, D]
                    const double* lse, // [H, T]
                    int64_t H, int64_t Hkv, int64_t T, int64_t D, int64_t P,
                    float* colsum);    // [H, P]

}  // namespace kvsim::ref
