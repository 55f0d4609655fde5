// Softmax over slots with alternative views (sim/strategies/slot.h): view 0 slots are seen by every view, view j
// slots only by view j; each view normalizes its own slots and the weights are averaged over the
// views, so the output is the mean of the views' outputs. With one view it is the plain softmax.
// Shared by ref::attend_slots, omp::attend_slots, the cuda kernel and the metrics, so all agree
// (a host-device function, sim/base/hd.h).
#pragma once

#include <math.h>
#include <stdint.h>

#include "sim/base/hd.h"

namespace kvsim {

// p[s] = mean over views j of softmax_j(z)[s]; view may be null (one view).
KVSIM_HD void view_softmax(const double* z, const int32_t* view, int64_t n_views, int64_t n, double* p) {
  if (!view || n_views <= 1) {
    double mx = -INFINITY, sum = 0;
    for (int64_t s = 0; s < n; ++s) mx = fmax(mx, z[s]);
    for (int64_t s = 0; s < n; ++s) sum += (p[s] = exp(z[s] - mx));
    for (int64_t s = 0; s < n; ++s) p[s] /= sum;
    return;
  }
  for (int64_t s = 0; s < n; ++s) p[s] = 0;
  for (int32_t j = 1; j <= n_views; ++j) {
    double mx = -INFINITY, sum = 0;
    for (int64_t s = 0; s < n; ++s)
      if (view[s] == 0 || view[s] == j) mx = fmax(mx, z[s]);
    for (int64_t s = 0; s < n; ++s)
      if (view[s] == 0 || view[s] == j) sum += exp(z[s] - mx);
    for (int64_t s = 0; s < n; ++s)
      if (view[s] == 0 || view[s] == j) p[s] += exp(z[s] - mx) / sum / static_cast<double>(n_views);
  }
}

}  // namespace kvsim
