#include "sim/kernels/attn_stats.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "sim/base/topk.h"

namespace kvsim::ref {

namespace {
constexpr int64_t kQueryTile = 16;
constexpr int64_t kKeyTile = 64;

// Top-K of one row by logit (sim/base/topk.h).
struct TopK {
  std::vector<float> z;
  std::vector<int32_t> pos;
  void reset(int64_t K) {
    z.assign(K, -INFINITY);
    pos.assign(K, -1);
  }
  void offer(float zi, int32_t i) { topk_offer(z.data(), pos.data(), static_cast<int64_t>(z.size()), zi, i); }
};
}  // namespace

void attn_stats(const float* q, const float* k, const float* v, int64_t H, int64_t Hkv, int64_t T, int64_t D,
                int64_t K, float* o, double* lse, float* entropy, int32_t* top_pos, float* top_w) {
  const int64_t G = H / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> z(kQueryTile * kKeyTile);
  std::vector<double> m(kQueryTile), l(kQueryTile), a(kQueryTile), acc(kQueryTile * D);
  std::vector<TopK> top(kQueryTile);
  for (int64_t h = 0; h < H; ++h) {
    const float* kh = k + (h / G) * T * D;
    const float* vh = v + (h / G) * T * D;
    for (int64_t t0 = 0; t0 < T; t0 += kQueryTile) {
      const int64_t nq = std::min(kQueryTile, T - t0);
      for (int64_t r = 0; r < nq; ++r) {
        m[r] = -INFINITY, l[r] = 0, a[r] = 0;
        top[r].reset(K);
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      const int64_t last = t0 + nq - 1;  // keys past the tile's last query are masked for all rows
      for (int64_t i0 = 0; i0 <= last; i0 += kKeyTile) {
        const int64_t nk = std::min(kKeyTile, last + 1 - i0);
        for (int64_t r = 0; r < nq; ++r) {
          const int64_t t = t0 + r;
          const float* qt = q + (h * T + t) * D;
          // Logits of this tile, with the running max, sum (l) and sum of p·z (a, for the entropy).
          double mx = m[r];
          for (int64_t c = 0; c < nk; ++c) {
            const int64_t i = i0 + c;
            if (i > t) break;
            double d = 0;
            for (int64_t x = 0; x < D; ++x) d += static_cast<double>(qt[x]) * kh[i * D + x];
            z[r * kKeyTile + c] = d * scale;
            mx = std::max(mx, z[r * kKeyTile + c]);
            top[r].offer(static_cast<float>(d * scale), static_cast<int32_t>(i));
          }
          if (i0 > t) continue;
          const double alpha = std::exp(m[r] - mx);  // exp(-inf) = 0 on the first tile
          l[r] *= alpha, a[r] *= alpha;
          for (int64_t x = 0; x < D; ++x) acc[r * D + x] *= alpha;
          for (int64_t c = 0; c < nk && i0 + c <= t; ++c) {
            const double zi = z[r * kKeyTile + c];
            const double e = std::exp(zi - mx);
            l[r] += e;
            a[r] += e * zi;
            const float* vi = vh + (i0 + c) * D;
            for (int64_t x = 0; x < D; ++x) acc[r * D + x] += e * vi[x];
          }
          m[r] = mx;
        }
      }
      for (int64_t r = 0; r < nq; ++r) {
        const int64_t t = t0 + r, row = h * T + t;
        const double L = m[r] + std::log(l[r]);
        lse[row] = L;
        entropy[row] = static_cast<float>(std::max(0.0, L - a[r] / l[r]));
        for (int64_t x = 0; x < D; ++x) o[row * D + x] = static_cast<float>(acc[r * D + x] / l[r]);
        for (int64_t j = 0; j < K; ++j) {
          top_pos[row * K + j] = top[r].pos[j];
          top_w[row * K + j] = top[r].pos[j] < 0 ? 0.0f : static_cast<float>(std::exp(top[r].z[j] - L));
        }
      }
    }
  }
}

void prompt_colsums(const float* q, const float* k, const double* lse, int64_t H, int64_t Hkv, int64_t T, int64_t D,
                    int64_t P, float* colsum) {
  const int64_t G = H / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> acc(P);
  for (int64_t h = 0; h < H; ++h) {
    const float* kh = k + (h / G) * T * D;
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t j = 0; j < P; ++j) {
      const float* qj = q + (h * T + j) * D;
      for (int64_t i = 0; i <= j; ++i) {
        double d = 0;
        for (int64_t x = 0; x < D; ++x) d += static_cast<double>(qj[x]) * kh[i * D + x];
        acc[i] += std::exp(d * scale - lse[h * T + j]);
      }
    }
    for (int64_t i = 0; i < P; ++i) colsum[h * P + i] = static_cast<float>(acc[i]);
  }
}

}  // namespace kvsim::ref
