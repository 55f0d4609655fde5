#include "sim/kernels/attend.h"

#include <cmath>
#include <vector>

#include "sim/kernels/attend_core.h"
#include "sim/kernels/attend_views.h"

namespace kvsim::ref {

// The plain loop over sim/kernels/attend_core.h and view_softmax, the arithmetic cuda/attend.cu runs.
void attend_slots(const float* q, int64_t q_stride, int64_t G, int64_t D, const SlotsView& slots, double* logit,
                  float* w, float* o_hat) {
  const int64_t n = slots.n;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> p(n);
  for (int64_t g = 0; g < G; ++g) {
    const float* qg = q + g * q_stride;
    for (int64_t s = 0; s < n; ++s) logit[g * n + s] = core::slot_logit(qg, slots.key + s * D, slots.bias[s], D, scale);
    view_softmax(logit + g * n, slots.view, slots.n_views, n, p.data());
    for (int64_t s = 0; s < n; ++s) w[g * n + s] = static_cast<float>(p[s]);
    for (int64_t x = 0; x < D; ++x) o_hat[g * D + x] = core::out_channel(p.data(), slots.value, n, D, x);
  }
}

}  // namespace kvsim::ref
