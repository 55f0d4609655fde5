#include "sim/ref/attend.h"

#include <cmath>
#include <vector>

namespace kvsim::ref {

void attend_slots(const float* q, int64_t q_stride, int64_t G, int64_t D, const float* key, const float* value,
                  const float* bias, int64_t n, double* logit, float* w, float* o_hat) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> acc(D);
  for (int64_t g = 0; g < G; ++g) {
    const float* qg = q + g * q_stride;
    double mx = -INFINITY;
    for (int64_t s = 0; s < n; ++s) {
      double d = 0;
      for (int64_t x = 0; x < D; ++x) d += static_cast<double>(qg[x]) * key[s * D + x];
      const double z = d * scale + bias[s];
      logit[g * n + s] = z;
      mx = std::max(mx, z);
    }
    double sum = 0;
    for (int64_t s = 0; s < n; ++s) sum += std::exp(logit[g * n + s] - mx);
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t s = 0; s < n; ++s) {
      const double p = std::exp(logit[g * n + s] - mx) / sum;
      w[g * n + s] = static_cast<float>(p);
      for (int64_t x = 0; x < D; ++x) acc[x] += p * value[s * D + x];
    }
    for (int64_t x = 0; x < D; ++x) o_hat[g * D + x] = static_cast<float>(acc[x]);
  }
}

}  // namespace kvsim::ref
