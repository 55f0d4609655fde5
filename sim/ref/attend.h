// Compressed attention over the slots of one cache at one decode step (design.md §3 step b), plain
// loops: the ground truth for sim/omp/attend and cuda/.
#pragma once

#include <cstdint>

namespace kvsim::ref {

// For each of the G query heads: logit[g, s] = q_g·k̂_s / sqrt(D) + b_s, w = softmax over s,
// o_hat[g] = sum_s w[g, s] v̂_s. n >= 1.
void attend_slots(const float* q,      // [G, D], row g at q + g * q_stride
                  int64_t q_stride, int64_t G, int64_t D,
                  const float* key,    // [n, D]
                  const float* value,  // [n, D]
                  const float* bias,   // [n]
                  int64_t n,
                  double* logit,       // [G, n] (double: exact masses are computed from it)
                  float* w,            // [G, n]
                  float* o_hat,        // [G, D]
                  const int32_t* view = nullptr,  // [n] alternative views (sim/slot.h), or null
                  int64_t n_views = 1);

}  // namespace kvsim::ref
