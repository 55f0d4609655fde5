#include "sim/kernels/attend.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "sim/kernels/attend_views.h"
#include "sim/kernels/omp/exp_f64.h"
#include "sim/kernels/omp/vec.h"

namespace kvsim::omp {

// ref's arithmetic (double logits, weights and output) arranged for speed: dot products and the
// output by explicit double FMAs on widened float data (vec.h), the dot products two slots at a
// time so each query vector is loaded once for both, the output channels held in registers; exps by the vectorised
// exp_nonpos (2 ulp); scratch reused per thread, so a step allocates nothing.

namespace {
// q·k for one query (double, [D]) and two keys (float, [D]).
inline void dot2(const double* qd, const float* k0, const float* k1, int64_t D, double& d0, double& d1) {
  VecF64 a0 = vzero(), a1 = vzero();
  int64_t x = 0;
  for (; x + kVecF64 <= D; x += kVecF64) {
    VecF64 qv = vload(qd + x);
    vpin(qv);
    a0 = vfma(qv, vwiden(k0 + x), a0);
    a1 = vfma(qv, vwiden(k1 + x), a1);
  }
  d0 = vsum(a0), d1 = vsum(a1);
  for (; x < D; ++x) d0 = std::fma(qd[x], k0[x], d0), d1 = std::fma(qd[x], k1[x], d1);
}

inline double dot1(const double* qd, const float* k, int64_t D) {
  VecF64 a = vzero();
  int64_t x = 0;
  for (; x + kVecF64 <= D; x += kVecF64) a = vfma(vload(qd + x), vwiden(k + x), a);
  double d = vsum(a);
  for (; x < D; ++x) d = std::fma(qd[x], k[x], d);
  return d;
}

// o[x] = sum_i p[i] v[i, x], i ascending: blocks of 8 vectors of channels held in registers over
// all slots (one widened load and one FMA per element), then single vectors, then scalars.
void weighted_sum(const double* p, const float* value, int64_t n, int64_t D, float* o) {
  constexpr int64_t kAcc = 8;
  int64_t x = 0;
  for (; x + kAcc * kVecF64 <= D; x += kAcc * kVecF64) {
    VecF64 a[kAcc];
    for (auto& v : a) v = vzero();
    for (int64_t i = 0; i < n; ++i) {
      const VecF64 pv = vset1(p[i]);
      const float* vi = value + i * D + x;
      for (int64_t j = 0; j < kAcc; ++j) a[j] = vfma(pv, vwiden(vi + j * kVecF64), a[j]);
    }
    double tmp[kAcc * kVecF64];
    for (int64_t j = 0; j < kAcc; ++j) vstore(tmp + j * kVecF64, a[j]);
    for (int64_t y = 0; y < kAcc * kVecF64; ++y) o[x + y] = static_cast<float>(tmp[y]);
  }
  for (; x + kVecF64 <= D; x += kVecF64) {
    VecF64 a = vzero();
    for (int64_t i = 0; i < n; ++i) a = vfma(vset1(p[i]), vwiden(value + i * D + x), a);
    double tmp[kVecF64];
    vstore(tmp, a);
    for (int64_t y = 0; y < kVecF64; ++y) o[x + y] = static_cast<float>(tmp[y]);
  }
  for (; x < D; ++x) {
    double a = 0;
    for (int64_t i = 0; i < n; ++i) a = std::fma(p[i], value[i * D + x], a);
    o[x] = static_cast<float>(a);
  }
}
}  // namespace

void attend_slots(const float* q, int64_t q_stride, int64_t G, int64_t D, const SlotsView& slots, double* logit,
                  float* w, float* o_hat) {
  const float *key = slots.key, *value = slots.value, *bias = slots.bias;
  const int32_t* view = slots.view;
  const int64_t n = slots.n, n_views = slots.n_views;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  thread_local std::vector<double> qd, p;
  qd.resize(D), p.resize(n);
  for (int64_t g = 0; g < G; ++g) {
    const float* qg = q + g * q_stride;
    for (int64_t x = 0; x < D; ++x) qd[x] = qg[x];
    double* lg = logit + g * n;
    int64_t s = 0;
    for (; s + 2 <= n; s += 2) {
      double d0, d1;
      dot2(qd.data(), key + s * D, key + (s + 1) * D, D, d0, d1);
      lg[s] = d0 * scale + bias[s], lg[s + 1] = d1 * scale + bias[s + 1];
    }
    for (; s < n; ++s) lg[s] = dot1(qd.data(), key + s * D, D) * scale + bias[s];
    // Weights and output in double, like the ref twin: `full` must reproduce the reference output
    // to 1e-6 relative, and float exps and sums over hundreds of slots drift past that.
    double inv = 1.0;
    if (view && n_views > 1) {
      view_softmax(lg, view, n_views, n, p.data());  // normalized already
    } else {
      double mx = -INFINITY, sum = 0;
#pragma omp simd reduction(max : mx)
      for (int64_t i = 0; i < n; ++i) mx = std::max(mx, lg[i]);
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < n; ++i) {
        p[i] = exp_nonpos(lg[i] - mx);
        sum += p[i];
      }
      inv = 1.0 / sum;
    }
    float* wg = w + g * n;
    for (int64_t i = 0; i < n; ++i) {
      p[i] *= inv;
      wg[i] = static_cast<float>(p[i]);
    }
    weighted_sum(p.data(), value, n, D, o_hat + g * D);
  }
}

}  // namespace kvsim::omp
