// The top-K rule shared by every backend's reference statistics (sim/ref, sim/omp, cuda): scores
// kept sorted best first, higher score then lower position. Keys arrive in increasing position, so
// an equal score never displaces an earlier one. A host-device function (sim/base/hd.h).
#pragma once

#include <stdint.h>

#include "sim/base/hd.h"

namespace kvsim {

// tz, tp: [K] scores and positions, tp[j] < 0 for an empty place.
KVSIM_HD void topk_offer(float* tz, int32_t* tp, int64_t K, float zi, int32_t i) {
  if (K == 0 || (tp[K - 1] >= 0 && !(zi > tz[K - 1]))) return;
  int64_t j = K - 1;
  while (j > 0 && (tp[j - 1] < 0 || zi > tz[j - 1])) {
    tz[j] = tz[j - 1];
    tp[j] = tp[j - 1];
    --j;
  }
  tz[j] = zi;
  tp[j] = i;
}

}  // namespace kvsim
