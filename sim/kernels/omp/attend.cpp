#include "sim/kernels/attend.h"

#include <cmath>
#include <vector>

#include "sim/kernels/attend_views.h"

namespace kvsim::omp {

namespace {
constexpr int64_t kMaxInlineD = 256;
}

void attend_slots(const float* q, int64_t q_stride, int64_t G, int64_t D, const SlotsView& slots, double* logit,
                  float* w, float* o_hat) {
  const float *key = slots.key, *value = slots.value, *bias = slots.bias;
  const int32_t* view = slots.view;
  const int64_t n = slots.n, n_views = slots.n_views;
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
    // Weights and output in double, like the ref twin: `full` must reproduce the reference output
    // to 1e-6 relative, and float exps and sums over hundreds of slots drift past that.
    float* wg = w + g * n;
    std::vector<double> p(static_cast<size_t>(n));
    double sum = 1.0;
    if (view && n_views > 1) {
      view_softmax(lg, view, n_views, n, p.data());  // normalized already
    } else {
      sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t s = 0; s < n; ++s) {
        p[static_cast<size_t>(s)] = std::exp(lg[s] - mx);
        sum += p[static_cast<size_t>(s)];
      }
    }
    const double inv = 1.0 / sum;
    double acc[kMaxInlineD];
    std::vector<double> acc_heap;
    double* og = acc;
    if (D > kMaxInlineD) {
      acc_heap.assign(static_cast<size_t>(D), 0.0);
      og = acc_heap.data();
    }
    for (int64_t x = 0; x < D; ++x) og[x] = 0.0;
    for (int64_t s = 0; s < n; ++s) {
      const double ps = p[static_cast<size_t>(s)] * inv;
      wg[s] = static_cast<float>(ps);
      const float* vs = value + s * D;
#pragma omp simd
      for (int64_t x = 0; x < D; ++x) og[x] += ps * vs[x];
    }
    for (int64_t x = 0; x < D; ++x) o_hat[g * D + x] = static_cast<float>(og[x]);
  }
}

}  // namespace kvsim::omp
