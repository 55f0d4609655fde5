// The arithmetic of the exact attention statistics (sim/kernels/attn_stats.h), once, as host-device
// functions (sim/base/hd.h): one query row's online softmax over 64-key tiles (logit = (q·k in
// double) * scale, the top-K rule of sim/base/topk.h), and one key's prompt column sum. ref
// (sim/kernels/ref/attn_stats.cpp) is the plain serial loop over them; cuda/attn_stats.cu runs a row
// per GPU thread, so it agrees with ref up to the device's exp/log, and its host emulation
// (tests/cuda_emulation.h) agrees bit for bit. omp is vectorized on its own and agrees within
// tolerances; tests/test_kernels_direct.cpp checks ref against a dense softmax written apart.
#pragma once

#include <math.h>
#include <stdint.h>

#include "sim/base/hd.h"
#include "sim/base/topk.h"

namespace kvsim::core {

inline constexpr int kStatsKeyTile = 64;    // key tile: its boundaries shape the sums (rescaling per tile)
inline constexpr int kStatsQueryTile = 64;  // cuda: rows per thread block (one thread per row)
inline constexpr int kStatsMaxK = 64;       // cuda: top-K capacity per row (thread-local arrays)
inline constexpr int kStatsMaxD = 256;      // cuda: accumulator capacity per row

// Running state of one query row: max m, sum l of exp(z - m), a = sum of exp(z - m) * z (entropy),
// acc[D] = sum of exp(z - m) * v, and the top-K so far.
struct StatsRow {
  double m, l, a;
  double* acc;  // [D]
  float* tz;    // [K]
  int32_t* tp;  // [K]
};

KVSIM_HD void stats_row_init(StatsRow& r, int64_t D, int K) {
  r.m = -INFINITY, r.l = 0, r.a = 0;
  for (int64_t x = 0; x < D; ++x) r.acc[x] = 0;
  for (int j = 0; j < K; ++j) r.tz[j] = -INFINITY, r.tp[j] = -1;
}

// Keys i0 .. i0 + nk - 1 of one tile (ktile, vtile: [nk, D], row c is key i0 + c) for the query at
// position t (keys past t are masked). z: scratch [kStatsKeyTile].
KVSIM_HD void stats_row_tile(StatsRow& r, const float* qt, const float* ktile, const float* vtile, int64_t i0,
                             int64_t nk, int64_t t, int64_t D, double scale, int K, double* z) {
  if (i0 > t) return;
  double mx = r.m;
  for (int64_t c = 0; c < nk; ++c) {
    const int64_t i = i0 + c;
    if (i > t) break;
    double d = 0;
    for (int64_t x = 0; x < D; ++x) d += static_cast<double>(qt[x]) * ktile[c * D + x];
    z[c] = d * scale;
    mx = fmax(mx, z[c]);
    topk_offer(r.tz, r.tp, K, static_cast<float>(d * scale), static_cast<int32_t>(i));
  }
  const double alpha = exp(r.m - mx);  // exp(-inf) = 0 on the first tile
  r.l *= alpha, r.a *= alpha;
  for (int64_t x = 0; x < D; ++x) r.acc[x] *= alpha;
  for (int64_t c = 0; c < nk && i0 + c <= t; ++c) {
    const double zi = z[c];
    const double e = exp(zi - mx);
    r.l += e;
    r.a += e * zi;
    const float* vi = vtile + c * D;
    for (int64_t x = 0; x < D; ++x) r.acc[x] += e * vi[x];
  }
  r.m = mx;
}

// Writes row `row` of the outputs (o: [.., D], lse, entropy, top_pos/top_w: [.., K]).
KVSIM_HD void stats_row_finish(const StatsRow& r, int64_t row, int64_t D, int K, float* o, double* lse, float* entropy,
                               int32_t* top_pos, float* top_w) {
  const double L = r.m + log(r.l);
  lse[row] = L;
  entropy[row] = static_cast<float>(fmax(0.0, L - r.a / r.l));
  for (int64_t x = 0; x < D; ++x) o[row * D + x] = static_cast<float>(r.acc[x] / r.l);
  for (int j = 0; j < K; ++j) {
    top_pos[row * K + j] = r.tp[j];
    top_w[row * K + j] = r.tp[j] < 0 ? 0.0f : static_cast<float>(exp(static_cast<double>(r.tz[j]) - L));
  }
}

// colsum of key i over the prompt's queries j = i .. P-1, j ascending.
KVSIM_HD float prompt_colsum_one(const float* qh,     // [T, D] queries of head h
                                 const float* ki,     // [D] key i
                                 const double* lseh,  // [T]
                                 int64_t i, int64_t P, int64_t D, double scale) {
  double acc = 0;
  for (int64_t j = i; j < P; ++j) {
    const float* qj = qh + j * D;
    double d = 0;
    for (int64_t x = 0; x < D; ++x) d += static_cast<double>(qj[x]) * ki[x];
    acc += exp(d * scale - lseh[j]);
  }
  return static_cast<float>(acc);
}

}  // namespace kvsim::core
