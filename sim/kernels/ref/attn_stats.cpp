#include "sim/kernels/attn_stats.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "sim/kernels/attn_stats_core.h"

namespace kvsim::ref {

// The plain loop over the arithmetic of sim/kernels/attn_stats_core.h, which cuda/attn_stats.cu
// runs too: per head, tiles of kQueryTile query rows; each 64-key tile (kStatsKeyTile) is folded
// into every row of the tile while it is in cache, then each row writes its outputs.

namespace {
constexpr int64_t kQueryTile = 16;
}  // namespace

void attn_stats(const float* q, const float* k, const float* v, int64_t H, int64_t Hkv, int64_t T, int64_t D, int64_t K,
                float* o, double* lse, float* entropy, int32_t* top_pos, float* top_w) {
  using core::kStatsKeyTile;
  const int64_t G = H / Hkv;
  const int Ki = static_cast<int>(K);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> acc(kQueryTile * D), z(kStatsKeyTile);
  std::vector<float> tz(kQueryTile * K + 1);  // + 1: a valid pointer when K = 0
  std::vector<int32_t> tp(kQueryTile * K + 1);
  std::vector<core::StatsRow> rows(kQueryTile);
  for (int64_t h = 0; h < H; ++h) {
    const float* kh = k + (h / G) * T * D;
    const float* vh = v + (h / G) * T * D;
    for (int64_t t0 = 0; t0 < T; t0 += kQueryTile) {
      const int64_t nq = std::min(kQueryTile, T - t0);
      for (int64_t r = 0; r < nq; ++r) {
        rows[r] = core::StatsRow{0, 0, 0, acc.data() + r * D, tz.data() + r * K, tp.data() + r * K};
        core::stats_row_init(rows[r], D, Ki);
      }
      const int64_t last = t0 + nq - 1;  // keys past the tile's last query are masked for all rows
      for (int64_t i0 = 0; i0 <= last; i0 += kStatsKeyTile) {
        const int64_t nk = std::min<int64_t>(kStatsKeyTile, last + 1 - i0);
        for (int64_t r = 0; r < nq; ++r)
          core::stats_row_tile(rows[r], q + (h * T + t0 + r) * D, kh + i0 * D, vh + i0 * D, i0, nk, t0 + r, D, scale,
                               Ki, z.data());
      }
      for (int64_t r = 0; r < nq; ++r)
        core::stats_row_finish(rows[r], h * T + t0 + r, D, Ki, o, lse, entropy, top_pos, top_w);
    }
  }
}

// One key's column sum at a time (core::prompt_colsum_one, a GPU thread's work).
void prompt_colsums(const float* q, const float* k, const double* lse, int64_t H, int64_t Hkv, int64_t T, int64_t D,
                    int64_t P, float* colsum) {
  const int64_t G = H / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < P; ++i)
      colsum[h * P + i] =
          core::prompt_colsum_one(q + h * T * D, k + ((h / G) * T + i) * D, lse + h * T, i, P, D, scale);
}

}  // namespace kvsim::ref
