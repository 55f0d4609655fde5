// The arithmetic of compressed attention over one cache's slots (sim/kernels/attend.h), once, as
// host-device functions (sim/base/hd.h): a logit per slot (dot product in double, x ascending) and
// an output channel (sum over slots ascending); the softmax between them is view_softmax
// (sim/kernels/attend_views.h). ref (sim/kernels/ref/attend.cpp) is the plain loop over them;
// cuda/attend.cu spreads slots and channels over threads, each value computed by one thread with
// these functions, so it agrees with ref up to the device's exp, and its host emulation
// (tests/cuda_emulation.h) agrees bit for bit. omp is vectorized on its own and agrees within
// tolerances; tests/test_kernels_direct.cpp checks ref against a softmax per view written apart.
#pragma once

#include <math.h>
#include <stdint.h>

#include "sim/base/hd.h"
#include "sim/kernels/attend_views.h"

namespace kvsim::core {

KVSIM_HD double slot_logit(const float* qg,  // [D] one query head
                           const float* ks,  // [D] one slot's key
                           float bias, int64_t D, double scale) {
  double d = 0;
  for (int64_t x = 0; x < D; ++x) d += static_cast<double>(qg[x]) * ks[x];
  return d * scale + bias;
}

// o[x] = sum_s p[s] v[s, x], s ascending (one channel).
KVSIM_HD float out_channel(const double* p,     // [n] weights
                           const float* value,  // [n, D]
                           int64_t n, int64_t D, int64_t x) {
  double acc = 0;
  for (int64_t s = 0; s < n; ++s) acc += p[s] * value[s * D + x];
  return static_cast<float>(acc);
}

}  // namespace kvsim::core
