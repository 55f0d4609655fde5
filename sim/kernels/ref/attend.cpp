#include "sim/kernels/attend.h"

#include <cmath>
#include <vector>

#include "sim/kernels/attend_views.h"

namespace kvsim::ref {

void attend_slots(const float* q, int64_t q_stride, int64_t G, int64_t D, const SlotsView& slots, double* logit,
                  float* w, float* o_hat) {
  const float *key = slots.key, *value = slots.value, *bias = slots.bias;
  const int32_t* view = slots.view;
  const int64_t n = slots.n, n_views = slots.n_views;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> acc(D), p(n);
  for (int64_t g = 0; g < G; ++g) {
    const float* qg = q + g * q_stride;
    for (int64_t s = 0; s < n; ++s) {
      double d = 0;
      for (int64_t x = 0; x < D; ++x) d += static_cast<double>(qg[x]) * key[s * D + x];
      logit[g * n + s] = d * scale + bias[s];
    }
    view_softmax(logit + g * n, view, n_views, n, p.data());
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t s = 0; s < n; ++s) {
      w[g * n + s] = static_cast<float>(p[s]);
      for (int64_t x = 0; x < D; ++x) acc[x] += p[s] * value[s * D + x];
    }
    for (int64_t x = 0; x < D; ++x) o_hat[g * D + x] = static_cast<float>(acc[x]);
  }
}

}  // namespace kvsim::ref
