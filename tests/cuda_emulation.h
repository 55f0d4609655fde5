// Host emulation of the cuda/ kernels: the same thread-to-work mapping as the .cu files (blocks of
// rows, tiles staged as in shared memory, one request's rows), executed sequentially on the CPU
// through the same host-device functions (sim/kernels/*_core.h) that ref loops over. On a machine
// without a GPU this checks the kernels' mapping of work to threads against ref; the "cuda:" cases
// check the launches where a device exists. (The quantization kernels' items need no emulation:
// ref runs them in the kernels' order, sim/kernels/ref/quant.cpp.)
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda/attend.h"
#include "sim/kernels/attend_core.h"
#include "sim/kernels/attn_stats_core.h"

namespace kvsim::test {

// cuda/attn_stats.cu attn_stats_kernel: blocks of kStatsQueryTile rows of one head; per key tile the
// block copies K and V rows into shared memory, then every row thread folds the tile in.
inline void emulate_attn_stats(const float* q, const float* k, const float* v, int64_t H, int64_t Hkv, int64_t T,
                               int64_t D, int64_t K, float* o, double* lse, float* entropy, int32_t* top_pos,
                               float* top_w) {
  using namespace core;
  const int64_t G = H / Hkv, n_tiles = (T + kStatsQueryTile - 1) / kStatsQueryTile;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<float> ks(kStatsKeyTile * D), vs(kStatsKeyTile * D);
  std::vector<double> acc(kStatsQueryTile * D), z(kStatsKeyTile);
  std::vector<float> tz(kStatsQueryTile * K + 1);
  std::vector<int32_t> tp(kStatsQueryTile * K + 1);
  std::vector<StatsRow> rows(kStatsQueryTile);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t b = 0; b < n_tiles; ++b) {
      const int64_t t0 = (n_tiles - 1 - b) * kStatsQueryTile, nq = std::min<int64_t>(kStatsQueryTile, T - t0);
      for (int64_t r = 0; r < nq; ++r) {
        rows[r] = StatsRow{0, 0, 0, acc.data() + r * D, tz.data() + r * K, tp.data() + r * K};
        stats_row_init(rows[r], D, static_cast<int>(K));
      }
      const int64_t last = t0 + nq - 1;
      for (int64_t i0 = 0; i0 <= last; i0 += kStatsKeyTile) {
        const int64_t nk = std::min<int64_t>(kStatsKeyTile, last + 1 - i0);
        for (int64_t e = 0; e < nk * D; ++e) {
          ks[e] = k[((h / G) * T + i0) * D + e];
          vs[e] = v[((h / G) * T + i0) * D + e];
        }
        for (int64_t r = 0; r < nq; ++r)
          stats_row_tile(rows[r], q + (h * T + t0 + r) * D, ks.data(), vs.data(), i0, nk, t0 + r, D, scale,
                         static_cast<int>(K), z.data());
      }
      for (int64_t r = 0; r < nq; ++r)
        stats_row_finish(rows[r], h * T + t0 + r, D, static_cast<int>(K), o, lse, entropy, top_pos, top_w);
    }
}

// cuda/attn_stats.cu prompt_colsums_kernel: one thread per (head, prompt key).
inline void emulate_prompt_colsums(const float* q, const float* k, const double* lse, int64_t H, int64_t Hkv, int64_t T,
                                   int64_t D, int64_t P, float* colsum) {
  const int64_t G = H / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int64_t idx = 0; idx < H * P; ++idx) {
    const int64_t h = idx / P, i = idx % P;
    colsum[idx] = core::prompt_colsum_one(q + h * T * D, k + ((h / G) * T + i) * D, lse + h * T, i, P, D, scale);
  }
}

// cuda/attend.cu attend_batch_kernel: one block per query row; slot logits, then the softmax by one
// thread, then weights and output channels.
inline void emulate_attend_batch(cuda::AttendBatch& b) {
  using namespace core;
  const int64_t D = b.D;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const int64_t outs = b.req.empty() ? 0 : b.req.back().out0 + b.req.back().G * b.req.back().n;
  b.logit.assign(outs, 0.0), b.w.assign(outs, 0.0f), b.o_hat.assign(b.rows() * D, 0.0f);
  std::vector<double> p(outs);
  for (const cuda::AttendRequest& r : b.req)
    for (int64_t g = 0; g < r.G; ++g) {
      const int64_t row = r.q0 + g;
      double* z = b.logit.data() + r.out0 + g * r.n;
      double* pg = p.data() + r.out0 + g * r.n;
      for (int64_t s = 0; s < r.n; ++s)
        z[s] = slot_logit(b.q.data() + row * D, b.key.data() + (r.slot0 + s) * D, b.bias[r.slot0 + s], D, scale);
      view_softmax(z, r.n_views > 1 ? b.view.data() + r.slot0 : nullptr, r.n_views, r.n, pg);
      for (int64_t s = 0; s < r.n; ++s) b.w[r.out0 + g * r.n + s] = static_cast<float>(pg[s]);
      for (int64_t x = 0; x < D; ++x) b.o_hat[row * D + x] = out_channel(pg, b.value.data() + r.slot0 * D, r.n, D, x);
    }
}

}  // namespace kvsim::test
