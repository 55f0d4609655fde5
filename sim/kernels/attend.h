// Compressed attention over the slots of one cache at one decode step (design.md §3 step b): the
// contract once, declared for every backend. ref (sim/kernels/ref/attend.cpp) is the plain-loop
// ground truth; omp (sim/kernels/omp/attend.cpp) is single-threaded by design (the replay runs
// instances in parallel), vectorized with omp simd; cuda (cuda/attend.cu) runs one request of the
// batched kernel (cuda/attend.h). All use view_softmax (sim/kernels/attend_views.h).
#pragma once

#include <cstdint>

namespace kvsim {

// The slots of one cache as plain data (SlotCache::slots_view()).
struct SlotsView {
  const float* key = nullptr;     // [n, D] as attention sees them (exact, dequantized or merged)
  const float* value = nullptr;   // [n, D]
  const float* bias = nullptr;    // [n] additive logit bias
  const int32_t* view = nullptr;  // [n] alternative view of each slot (sim/strategies/slot.h), or null
  int64_t n = 0;                  // slots, >= 1
  int64_t n_views = 1;
};

// For each of the G query heads: logit[g, s] = q_g·k̂_s / sqrt(D) + b_s, w = the view softmax over
// s, o_hat[g] = sum_s w[g, s] v̂_s.
using AttendSlots = void(const float* q,  // [G, D], row g at q + g * q_stride
                         int64_t q_stride, int64_t G, int64_t D, const SlotsView& slots,
                         double* logit,  // [G, n] (double: exact masses are computed from it)
                         float* w,       // [G, n]
                         float* o_hat);  // [G, D]
using AttendSlotsFn = AttendSlots*;

namespace ref {
AttendSlots attend_slots;
}
namespace omp {
AttendSlots attend_slots;
}
namespace cuda {
AttendSlots attend_slots;  // NotCompiled without CUDA
}

}  // namespace kvsim
