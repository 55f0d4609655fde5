// The arithmetic of cuda/attend.cu (compressed attention over one cache's slots, a batch of
// requests per launch) as host-device functions, in the order of sim/kernels/ref/attend.cpp: a logit per
// slot (dot product in double, x ascending), the view softmax of sim/kernels/attend_views.h (shared), and an output
// per channel (sum over slots ascending). The kernel spreads slots and channels over threads but
// each value is computed by one thread in ref's order, so it agrees with ref up to the device's exp,
// and the host emulation (tests/test_cuda_attend.cpp) agrees bit for bit.
#pragma once

#include <math.h>
#include <stdint.h>

#include "sim/base/hd.h"
#include "sim/kernels/attend_views.h"

namespace kvsim::cuda::core {

// One attention request: the G query heads sharing one cache at one step. Offsets index the batch's
// packed arrays (attend.h AttendBatch).
struct AttendRequest {
  int64_t slot0;   // first slot in the packed key/value/bias/view arrays
  int64_t n;       // slots (>= 1)
  int64_t q0;      // first query row in the packed queries [rows, D]
  int64_t G;       // query heads
  int64_t out0;    // first element of this request's [G, n] logits / weights
  int32_t n_views; // 1: plain softmax
};

KVSIM_HD double slot_logit(const float* qg, const float* ks, float bias, int64_t D, double scale) {
  double d = 0;
  for (int64_t x = 0; x < D; ++x) d += static_cast<double>(qg[x]) * ks[x];
  return d * scale + bias;
}

// o[x] = sum_s p[s] v[s, x], s ascending (one channel).
KVSIM_HD float out_channel(const double* p, const float* value, int64_t n, int64_t D, int64_t x) {
  double acc = 0;
  for (int64_t s = 0; s < n; ++s) acc += p[s] * value[s * D + x];
  return static_cast<float>(acc);
}

}  // namespace kvsim::cuda::core
