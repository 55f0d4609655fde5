#include "sim/omp/attn_stats.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace kvsim::omp {

namespace {
constexpr int64_t kQueryTile = 16;
constexpr int64_t kKeyTile = 64;

// Top-K of one row, sorted best first (higher logit, then lower position); see sim/ref.
void topk_offer(float* tz, int32_t* tp, int64_t K, float zi, int32_t i) {
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

// Products and sums in double: a row dominated by one token (a sink) has lse = its logit, so
// a float logit would put its rounding (~1e-6 at |z| = 10) straight into every mass.
inline double dot_f64(const float* a, const float* b, int64_t D) {
  double d = 0;
#pragma omp simd reduction(+ : d)
  for (int64_t x = 0; x < D; ++x) d += static_cast<double>(a[x]) * static_cast<double>(b[x]);
  return d;
}
}  // namespace

void attn_stats(const float* q, const float* k, const float* v, int64_t H, int64_t Hkv, int64_t T, int64_t D,
                int64_t K, float* o, double* lse, float* entropy, int32_t* top_pos, float* top_w) {
  const int64_t G = H / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const int64_t n_tiles = (T + kQueryTile - 1) / kQueryTile;
  // Later tiles cost more (causal): dynamic scheduling, largest first.
#pragma omp parallel
  {
    std::vector<double> z(kQueryTile * kKeyTile);
    std::vector<float> acc(kQueryTile * D), tz(kQueryTile * K);
    std::vector<int32_t> tp(kQueryTile * K);
    std::vector<double> m(kQueryTile), l(kQueryTile), a(kQueryTile);
#pragma omp for schedule(dynamic, 1)
    for (int64_t job = 0; job < H * n_tiles; ++job) {
      const int64_t h = job % H, t0 = (n_tiles - 1 - job / H) * kQueryTile;
      const float* kh = k + (h / G) * T * D;
      const float* vh = v + (h / G) * T * D;
      const int64_t nq = std::min(kQueryTile, T - t0);
      std::fill(m.begin(), m.end(), -INFINITY);
      std::fill(l.begin(), l.end(), 0.0);
      std::fill(a.begin(), a.end(), 0.0);
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(tz.begin(), tz.end(), -INFINITY);
      std::fill(tp.begin(), tp.end(), -1);
      const int64_t last = t0 + nq - 1;
      for (int64_t i0 = 0; i0 <= last; i0 += kKeyTile) {
        const int64_t nk = std::min(kKeyTile, last + 1 - i0);
        for (int64_t r = 0; r < nq; ++r) {
          const int64_t t = t0 + r;
          if (i0 > t) continue;
          const int64_t nc = std::min(nk, t + 1 - i0);  // causal
          const float* qt = q + (h * T + t) * D;
          double* zr = z.data() + r * kKeyTile;
          double mx = m[r];
          for (int64_t c = 0; c < nc; ++c) {
            zr[c] = dot_f64(qt, kh + (i0 + c) * D, D) * scale;
            mx = std::max(mx, zr[c]);
          }
          for (int64_t c = 0; c < nc; ++c)
            topk_offer(&tz[r * K], &tp[r * K], K, static_cast<float>(zr[c]), static_cast<int32_t>(i0 + c));
          const double alpha = std::exp(m[r] - mx);
          l[r] *= alpha, a[r] *= alpha;
          float* ar = acc.data() + r * D;
          const float af = static_cast<float>(alpha);
#pragma omp simd
          for (int64_t x = 0; x < D; ++x) ar[x] *= af;
          double ls = 0, as = 0;
          for (int64_t c = 0; c < nc; ++c) {
            const double ed = std::exp(zr[c] - mx);  // double: lse must be exact to ~1e-9 (mass)
            const float e = static_cast<float>(ed);
            ls += ed;
            as += ed * zr[c];
            const float* vi = vh + (i0 + c) * D;
#pragma omp simd
            for (int64_t x = 0; x < D; ++x) ar[x] += e * vi[x];
          }
          l[r] += ls, a[r] += as;
          m[r] = mx;
        }
      }
      for (int64_t r = 0; r < nq; ++r) {
        const int64_t row = h * T + t0 + r;
        const double L = m[r] + std::log(l[r]);
        lse[row] = L;
        entropy[row] = static_cast<float>(std::max(0.0, L - a[r] / l[r]));
        const float inv = static_cast<float>(1.0 / l[r]);
        for (int64_t x = 0; x < D; ++x) o[row * D + x] = acc[r * D + x] * inv;
        for (int64_t j = 0; j < K; ++j) {
          top_pos[row * K + j] = tp[r * K + j];
          top_w[row * K + j] = tp[r * K + j] < 0 ? 0.0f : static_cast<float>(std::exp(tz[r * K + j] - L));
        }
      }
    }
  }
}

void prompt_colsums(const float* q, const float* k, const double* lse, int64_t H, int64_t Hkv, int64_t T, int64_t D,
                    int64_t P, float* colsum) {
  const int64_t G = H / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t h = 0; h < H; ++h) {
    const float* kh = k + (h / G) * T * D;
    std::vector<double> acc(P, 0.0);
    for (int64_t j = 0; j < P; ++j) {
      const float* qj = q + (h * T + j) * D;
      const double L = lse[h * T + j];
      for (int64_t i = 0; i <= j; ++i)
        acc[i] += std::exp(dot_f64(qj, kh + i * D, D) * scale - L);
    }
    for (int64_t i = 0; i < P; ++i) colsum[h * P + i] = static_cast<float>(acc[i]);
  }
}

}  // namespace kvsim::omp
