// Eigen-decomposition of a small symmetric matrix by cyclic Jacobi rotations in double: plain,
// deterministic (no threads, no LAPACK) and accurate to rounding for the sizes kvsim needs
// (Hkv·D ≤ a few thousand; O(n³) per sweep). ShadowKV's low-rank keys use it on AᵀA.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace kvsim {

// a: [n, n] symmetric, row-major (destroyed). On return w[i] are the eigenvalues in descending
// order (ties: the lower original index first) and v[r * n + i] is component r of eigenvector i.
inline void sym_eigen(std::vector<double>& a, int64_t n, std::vector<double>& w, std::vector<double>& v) {
  std::vector<double> vv(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) vv[i * n + i] = 1.0;
  double norm = 0;
  for (double x : a) norm += x * x;
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0;
    for (int64_t p = 0; p < n; ++p)
      for (int64_t q = p + 1; q < n; ++q) off += a[p * n + q] * a[p * n + q];
    if (off <= 1e-30 * norm || off == 0) break;
    for (int64_t p = 0; p < n; ++p)
      for (int64_t q = p + 1; q < n; ++q) {
        const double apq = a[p * n + q];
        if (apq == 0) continue;
        // The rotation in the (p, q) plane that zeroes a[p, q] (the smaller angle).
        const double theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
        const double t = std::fabs(theta) > 1e150
                             ? 0.5 / theta
                             : (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
        for (int64_t k = 0; k < n; ++k) {  // columns p, q
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq, a[k * n + q] = s * akp + c * akq;
        }
        for (int64_t k = 0; k < n; ++k) {  // rows p, q
          const double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk, a[q * n + k] = s * apk + c * aqk;
        }
        for (int64_t k = 0; k < n; ++k) {
          const double vkp = vv[k * n + p], vkq = vv[k * n + q];
          vv[k * n + p] = c * vkp - s * vkq, vv[k * n + q] = s * vkp + c * vkq;
        }
      }
  }
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t i, int64_t j) { return a[i * n + i] > a[j * n + j]; });
  w.resize(static_cast<size_t>(n)), v.resize(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i) {
    w[i] = a[order[i] * n + order[i]];
    for (int64_t r = 0; r < n; ++r) v[r * n + i] = vv[r * n + order[i]];
  }
}

}  // namespace kvsim
