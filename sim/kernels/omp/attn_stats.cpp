#include "sim/kernels/attn_stats.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "sim/base/topk.h"
#include "sim/kernels/omp/exp_f64.h"

namespace kvsim::omp {

// Same algorithm as sim/kernels/ref/attn_stats.cpp (tiles, online softmax, top-K by logit), arranged for
// speed: (head, query tile) jobs over threads, largest (latest) tiles first; per key tile the keys
// and queries are widened to double once, logits come from a 2-row x 4-key register block, exps
// from a vectorizable double exp, and values accumulate 4 keys at a time in double.
// Logits, exps and lse stay in double: a row dominated by one token (a sink) has lse = its logit,
// and a float logit would put its rounding (~1e-6 at |z| = 10) into every mass the replay measures.

namespace {
constexpr int64_t kQueryTile = 16;
constexpr int64_t kKeyTile = 64;

// z[r][c] = q_r · k_c for 2 rows and 4 keys (all double, contiguous [.., D]).
inline void dot_2x4(const double* q0, const double* q1, const double* k, int64_t D, double* z0, double* z1) {
  const double *k0 = k, *k1 = k + D, *k2 = k + 2 * D, *k3 = k + 3 * D;
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)
  for (int64_t x = 0; x < D; ++x) {
    a0 += q0[x] * k0[x], a1 += q0[x] * k1[x], a2 += q0[x] * k2[x], a3 += q0[x] * k3[x];
    b0 += q1[x] * k0[x], b1 += q1[x] * k1[x], b2 += q1[x] * k2[x], b3 += q1[x] * k3[x];
  }
  z0[0] = a0, z0[1] = a1, z0[2] = a2, z0[3] = a3;
  z1[0] = b0, z1[1] = b1, z1[2] = b2, z1[3] = b3;
}

inline double dot_1(const double* a, const double* b, int64_t D) {
  double d = 0;
#pragma omp simd reduction(+ : d)
  for (int64_t x = 0; x < D; ++x) d += a[x] * b[x];
  return d;
}
}  // namespace

void attn_stats(const float* q, const float* k, const float* v, int64_t H, int64_t Hkv, int64_t T, int64_t D, int64_t K,
                float* o, double* lse, float* entropy, int32_t* top_pos, float* top_w) {
  const int64_t G = H / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const int64_t n_tiles = (T + kQueryTile - 1) / kQueryTile;
#pragma omp parallel
  {
    std::vector<double> z(kQueryTile * kKeyTile), qd(kQueryTile * D), kd(kKeyTile * D), e(kKeyTile);
    std::vector<double> acc(kQueryTile * D);
    std::vector<float> tz(kQueryTile * K);
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
      for (int64_t r = 0; r < nq; ++r)
        for (int64_t x = 0; x < D; ++x) qd[r * D + x] = static_cast<double>(q[(h * T + t0 + r) * D + x]) * scale;
      const int64_t last = t0 + nq - 1;
      for (int64_t i0 = 0; i0 <= last; i0 += kKeyTile) {
        const int64_t nk = std::min(kKeyTile, last + 1 - i0);
        for (int64_t i = 0; i < nk * D; ++i) kd[i] = static_cast<double>(kh[i0 * D + i]);
        // Logits of the whole tile (the diagonal tile's masked part is computed and ignored).
        int64_t r = 0;
        for (; r + 2 <= nq; r += 2) {
          int64_t c = 0;
          for (; c + 4 <= nk; c += 4)
            dot_2x4(&qd[r * D], &qd[(r + 1) * D], &kd[c * D], D, &z[r * kKeyTile + c], &z[(r + 1) * kKeyTile + c]);
          for (; c < nk; ++c) {
            z[r * kKeyTile + c] = dot_1(&qd[r * D], &kd[c * D], D);
            z[(r + 1) * kKeyTile + c] = dot_1(&qd[(r + 1) * D], &kd[c * D], D);
          }
        }
        for (; r < nq; ++r)
          for (int64_t c = 0; c < nk; ++c) z[r * kKeyTile + c] = dot_1(&qd[r * D], &kd[c * D], D);
        for (r = 0; r < nq; ++r) {
          const int64_t t = t0 + r;
          if (i0 > t) continue;
          const int64_t nc = std::min(nk, t + 1 - i0);  // causal
          const double* zr = &z[r * kKeyTile];
          double mx = m[r];
          for (int64_t c = 0; c < nc; ++c) mx = std::max(mx, zr[c]);
          for (int64_t c = 0; c < nc; ++c)
            topk_offer(&tz[r * K], &tp[r * K], K, static_cast<float>(zr[c]), static_cast<int32_t>(i0 + c));
          const double alpha = exp_nonpos(m[r] - mx);  // m = -inf on the first tile: clamps to ~0, times l = 0
          double ls = 0, as = 0;
#pragma omp simd reduction(+ : ls, as)
          for (int64_t c = 0; c < nc; ++c) {
            const double ed = exp_nonpos(zr[c] - mx);
            e[c] = ed;
            ls += ed;
            as += ed * zr[c];
          }
          l[r] = l[r] * alpha + ls, a[r] = a[r] * alpha + as;
          m[r] = mx;
          // Values accumulate in double: the reference output is the ground truth every
          // configuration is compared with, and float sums over T keys drift by ~sqrt(T) ulp.
          double* ar = &acc[r * D];
#pragma omp simd
          for (int64_t x = 0; x < D; ++x) ar[x] *= alpha;
          int64_t c = 0;
          for (; c + 4 <= nc; c += 4) {
            const double e0 = e[c], e1 = e[c + 1], e2 = e[c + 2], e3 = e[c + 3];
            const float* v0 = vh + (i0 + c) * D;
#pragma omp simd
            for (int64_t x = 0; x < D; ++x)
              ar[x] += e0 * v0[x] + e1 * v0[D + x] + e2 * v0[2 * D + x] + e3 * v0[3 * D + x];
          }
          for (; c < nc; ++c) {
            const double ec = e[c];
            const float* vc = vh + (i0 + c) * D;
#pragma omp simd
            for (int64_t x = 0; x < D; ++x) ar[x] += ec * vc[x];
          }
        }
      }
      for (int64_t r = 0; r < nq; ++r) {
        const int64_t row = h * T + t0 + r;
        const double L = m[r] + std::log(l[r]);
        lse[row] = L;
        entropy[row] = static_cast<float>(std::max(0.0, L - a[r] / l[r]));
        const double inv = 1.0 / l[r];
        for (int64_t x = 0; x < D; ++x) o[row * D + x] = static_cast<float>(acc[r * D + x] * inv);
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
#pragma omp parallel
  {
    std::vector<double> qd(D), kd(P * D), acc(P), z(P);
#pragma omp for schedule(dynamic, 1)
    for (int64_t h = 0; h < H; ++h) {
      const float* kh = k + (h / G) * T * D;
      for (int64_t i = 0; i < P * D; ++i) kd[i] = kh[i];
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < P; ++j) {
        for (int64_t x = 0; x < D; ++x) qd[x] = static_cast<double>(q[(h * T + j) * D + x]) * scale;
        const double L = lse[h * T + j];
        for (int64_t i = 0; i <= j; ++i) z[i] = dot_1(qd.data(), &kd[i * D], D);
#pragma omp simd
        for (int64_t i = 0; i <= j; ++i) acc[i] += exp_nonpos(std::min(0.0, z[i] - L));
      }
      for (int64_t i = 0; i < P; ++i) colsum[h * P + i] = static_cast<float>(acc[i]);
    }
  }
}

}  // namespace kvsim::omp
