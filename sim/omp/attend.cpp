#include "sim/omp/attend.h"

#include <cmath>
#include <vector>

namespace kvsim::omp {

void attend_slots(const float* q, int64_t q_stride, int64_t G, int64_t D, const float* key, const float* value,
                  const float* bias, int64_t n, double* logit, float* w, float* o_hat) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int64_t g = 0; g < G; ++g) {
    const float* qg = q + g * q_stride;
    double* lg = logit + g * n;
    double mx = -INFINITY;
    for (int64_t s = 0; s < n; ++s) {
      const float* ks = key + s * D;
      double d = 0;
#pragma omp simd reduction(+ : d)
      for (int64_t x = 0; x < D; ++x) d += static_cast<double>(qg[x]) * static_cast<double>(ks[x]);
      lg[s] = d * scale + bias[s];
      mx = std::max(mx, lg[s]);
    }
    double sum = 0;
    float* wg = w + g * n;
#pragma omp simd reduction(+ : sum)
    for (int64_t s = 0; s < n; ++s) {
      wg[s] = std::exp(static_cast<float>(lg[s] - mx));
      sum += wg[s];
    }
    const float inv = static_cast<float>(1.0 / sum);
    float* og = o_hat + g * D;
    for (int64_t x = 0; x < D; ++x) og[x] = 0.0f;
    for (int64_t s = 0; s < n; ++s) {
      wg[s] *= inv;
      const float p = wg[s];
      const float* vs = value + s * D;
#pragma omp simd
      for (int64_t x = 0; x < D; ++x) og[x] += p * vs[x];
    }
  }
}

}  // namespace kvsim::omp
