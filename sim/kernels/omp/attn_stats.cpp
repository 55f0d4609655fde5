#include "sim/kernels/attn_stats.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "sim/kernels/omp/exp_f64.h"
#include "sim/kernels/omp/vec.h"

namespace kvsim::omp {

// Same algorithm as sim/kernels/ref/attn_stats.cpp (64-key tiles, online softmax, top-K by logit),
// arranged for speed. A job is (KV head, tile of 16 query positions): the G query heads that read
// that KV head are its rows together, so each key tile is transposed and widened to double once for
// G x 16 rows. Logits are a register-blocked product (8 rows x 2 vectors of keys, explicit FMAs of
// vec.h), exps a vectorised double exp, the values of a key tile a second register-blocked product
// in float (8 rows x 2 vectors of the head dimension), and a logit reaches the top-K insertion only
// when it beats the row's current K-th best.
// Accuracy kept: logits, exps, the softmax and entropy sums and lse are double: a row dominated by
// one token (a sink) has lse = its logit, and a float logit would put its rounding (~1e-6 at
// |z| = 10) into every mass the replay measures. The output is accumulated in double across key
// tiles; within one tile (64 keys) the weights exp(z - m) are rounded to float and summed in float,
// a relative error of ~64 * 2^-24 ~ 4e-6 of the tile's contribution at worst (~5e-7 typical),
// within the o tolerance the backend tests declare (1e-6 absolute + 1e-5 relative against ref).

namespace {
constexpr int64_t kQueryTile = 16;
constexpr int64_t kKeyTile = 64;  // a multiple of 2 * kVecF64 at every width
constexpr int64_t kRows = 8;      // rows of a register block (8 x 2 accumulators)
constexpr int64_t kCols = 2 * kVecF64;
constexpr int64_t kColsF = 2 * kVecF32;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// z[r, c] = sum_x qd[r, x] * kt[x, c] for r < Rp (a multiple of kRows), c < ncp (a multiple of kCols).
// qd: [Rp, D]; kt: [kKeyTile / kCols, D, kCols] (the key tile transposed by column blocks, each
// contiguous: a strided [D, kKeyTile] layout maps a block's lines onto a few L1 sets); z: [Rp, kKeyTile].
// Keys outer: a column block of kt ([D, kCols], 16 KB at D = 128) stays in L1 across the row blocks.
void logits_block(const double* qd, int64_t Rp, const double* kt, int64_t ncp, int64_t D, double* z) {
  for (int64_t c = 0; c < ncp; c += kCols)
    for (int64_t r = 0; r < Rp; r += kRows) {
      VecF64 s[kRows][2];
      for (auto& row : s) row[0] = row[1] = vzero();
      for (int64_t x = 0; x < D; ++x) {
        const double* kx = kt + c * D + x * kCols;  // block c / kCols starts at (c / kCols) * D * kCols
        VecF64 k0 = vload(kx), k1 = vload(kx + kVecF64);
        vpin(k0), vpin(k1);
        for (int64_t i = 0; i < kRows; ++i) {
          const VecF64 qb = vset1(qd[(r + i) * D + x]);
          s[i][0] = vfma(qb, k0, s[i][0]);
          s[i][1] = vfma(qb, k1, s[i][1]);
        }
      }
      for (int64_t i = 0; i < kRows; ++i) {
        vstore(z + (r + i) * kKeyTile + c, s[i][0]);
        vstore(z + (r + i) * kKeyTile + c + kVecF64, s[i][1]);
      }
    }
}

// acc[r, :] = alpha[r] * acc[r, :] + sum_{c < nk} e[r, c] * v[c, :] for r < Rp, the tile's sum in float.
// e: [Rp, kKeyTile]; vb: [Dp / kColsF, kKeyTile, kColsF] (the value tile by column blocks, each
// contiguous); acc: [Rp, Dp]. Head dimension outer: a column block of vb (8 KB) stays in L1 across
// the row blocks.
void values_block(const float* e, const double* alpha, int64_t Rp, const float* vb, int64_t nk, int64_t Dp,
                  double* acc) {
  for (int64_t x = 0; x < Dp; x += kColsF)
    for (int64_t r = 0; r < Rp; r += kRows) {
      VecF32 s[kRows][2];
      for (auto& row : s) row[0] = row[1] = vzero_f();
      for (int64_t c = 0; c < nk; ++c) {
        const float* vx = vb + x * kKeyTile + c * kColsF;  // block x / kColsF starts at x * kKeyTile
        VecF32 v0 = vload(vx), v1 = vload(vx + kVecF32);
        vpin(v0), vpin(v1);
        for (int64_t i = 0; i < kRows; ++i) {
          const VecF32 eb = vset1(e[(r + i) * kKeyTile + c]);
          s[i][0] = vfma(eb, v0, s[i][0]);
          s[i][1] = vfma(eb, v1, s[i][1]);
        }
      }
      for (int64_t i = 0; i < kRows; ++i) {
        float tile[kColsF];
        vstore(tile, s[i][0]);
        vstore(tile + kVecF32, s[i][1]);
        double* ar = acc + (r + i) * Dp + x;
        const double al = alpha[r + i];
#pragma omp simd
        for (int64_t y = 0; y < kColsF; ++y) ar[y] = al * ar[y] + static_cast<double>(tile[y]);
      }
    }
}

// Rows r = g * nq + p of qd ([Rp, D], the rest zero): query head kvh * G + g at position t0 + p,
// widened to double and scaled.
void load_queries(const float* q, int64_t kvh, int64_t G, int64_t T, int64_t t0, int64_t nq, int64_t D, double scale,
                  std::vector<double>& qd) {
  std::fill(qd.begin(), qd.end(), 0.0);
  for (int64_t r = 0; r < G * nq; ++r) {
    const float* qr = q + ((kvh * G + r / nq) * T + t0 + r % nq) * D;
    for (int64_t x = 0; x < D; ++x) qd[r * D + x] = static_cast<double>(qr[x]) * scale;
  }
}

// Key tile rows i0 .. i0 + nk - 1 of one KV head ([T, D]) into kt (logits_block's layout), zero past nk.
void transpose_keys(const float* kh, int64_t i0, int64_t nk, int64_t D, double* kt) {
  for (int64_t c = 0; c < kKeyTile; ++c) {
    double* col = kt + (c / kCols) * D * kCols + c % kCols;
    if (c < nk)
      for (int64_t x = 0; x < D; ++x) col[x * kCols] = kh[(i0 + c) * D + x];
    else
      for (int64_t x = 0; x < D; ++x) col[x * kCols] = 0;
  }
}

// Value tile rows i0 .. i0 + nk - 1 ([T, D]) into vb (values_block's layout); columns D .. Dp - 1
// stay zero.
void block_values(const float* vh, int64_t i0, int64_t nk, int64_t D, float* vb) {
  for (int64_t c = 0; c < nk; ++c)
    for (int64_t x = 0; x < D; ++x)
      vb[(x / kColsF) * kKeyTile * kColsF + c * kColsF + x % kColsF] = vh[(i0 + c) * D + x];
}

// The top-K of a row as a binary min-heap of (score, position), the worst kept at the root: worse
// means a lower score, then a higher position. That is sim/base/topk.h's rule (topk_offer keeps the
// list sorted by insertion, O(K) a step; the heap takes O(log K)), so the same K entries are kept,
// and heap_sorted puts them in topk_offer's order.
bool worse(float za, int32_t pa, float zb, int32_t pb) { return za < zb || (za == zb && pa > pb); }

void heap_offer(float* hz, int32_t* hp, int64_t K, int64_t& n, float z, int32_t pos) {
  int64_t i;
  if (n < K) {
    for (i = n++; i > 0 && worse(z, pos, hz[(i - 1) / 2], hp[(i - 1) / 2]); i = (i - 1) / 2)
      hz[i] = hz[(i - 1) / 2], hp[i] = hp[(i - 1) / 2];
  } else {
    if (!worse(hz[0], hp[0], z, pos)) return;
    for (i = 0;;) {
      int64_t ch = 2 * i + 1;
      if (ch >= K) break;
      if (ch + 1 < K && worse(hz[ch + 1], hp[ch + 1], hz[ch], hp[ch])) ++ch;
      if (!worse(hz[ch], hp[ch], z, pos)) break;
      hz[i] = hz[ch], hp[i] = hp[ch], i = ch;
    }
  }
  hz[i] = z, hp[i] = pos;
}

// The n held entries best first (higher score, then lower position), the rest -inf / -1.
void heap_sorted(float* hz, int32_t* hp, int64_t K, int64_t n, std::vector<std::pair<float, int32_t>>& e) {
  e.resize(K);
  for (int64_t i = 0; i < n; ++i) e[i] = {hz[i], hp[i]};
  std::sort(e.begin(), e.begin() + n,
            [](const auto& a, const auto& b) { return worse(b.first, b.second, a.first, a.second); });
  for (int64_t i = 0; i < K; ++i) hz[i] = i < n ? e[i].first : -INFINITY, hp[i] = i < n ? e[i].second : -1;
}

// Per-thread buffers of one job: Rp rows (G heads x kQueryTile positions, padded to kRows).
struct StatsJob {
  int64_t Rp, D, Dp, K;
  std::vector<double> qd, kt, z, acc, m, l, a, alpha;
  std::vector<float> vd, e, tz;
  std::vector<int32_t> tp;
  std::vector<int64_t> tn;  // [Rp] entries in each row's heap
  std::vector<std::pair<float, int32_t>> sorted;
  StatsJob(int64_t G, int64_t D_, int64_t K_)
      : Rp(round_up(G * kQueryTile, kRows)), D(D_), Dp(round_up(D_, kColsF)), K(K_), qd(Rp * D), kt(D * kKeyTile),
        z(Rp * kKeyTile), acc(Rp * Dp), m(Rp), l(Rp), a(Rp), alpha(Rp), vd(kKeyTile * Dp, 0.0f), e(Rp * kKeyTile, 0.0f),
        tz(Rp * K + 1), tp(Rp * K + 1), tn(Rp) {}
};

// Folds the tile's logits of row r (position t) into its softmax state and top-K, and writes its
// exps into e (zero past the causal limit) and its rescale factor into alpha.
void softmax_row(StatsJob& j, int64_t r, int64_t t, int64_t i0, int64_t nk) {
  const double* zr = &j.z[r * kKeyTile];
  float* er = &j.e[r * kKeyTile];
  const int64_t nc = std::clamp<int64_t>(t + 1 - i0, 0, nk);
  if (nc == 0) {
    std::fill(er, er + nk, 0.0f);
    j.alpha[r] = 1.0;
    return;
  }
  double tmx = -INFINITY;  // the tile's largest logit
#pragma omp simd reduction(max : tmx)
  for (int64_t c = 0; c < nc; ++c) tmx = std::max(tmx, zr[c]);
  const double mx = std::max(j.m[r], tmx);
  if (j.K > 0) {
    float* hz = &j.tz[r * j.K];
    int32_t* hp = &j.tp[r * j.K];
    int64_t& n = j.tn[r];
    // Once the heap is full a logit can enter only if float(z) >= the root's score (equal: it enters
    // when its position is lower, as with tiles taken latest first). Rounding is monotone, so a tile
    // whose float(largest logit) is below the root is skipped whole.
    if (n < j.K || static_cast<float>(tmx) >= hz[0])
      for (int64_t c = 0; c < nc; ++c) {
        const float zc = static_cast<float>(zr[c]);
        if (n < j.K || zc >= hz[0]) heap_offer(hz, hp, j.K, n, zc, static_cast<int32_t>(i0 + c));
      }
  }
  const double alpha = exp_nonpos(j.m[r] - mx);  // m = -inf on the first tile: clamps to ~0, times l = 0
  double ed[kKeyTile], ls = 0, as = 0;
#pragma omp simd reduction(+ : ls, as)
  for (int64_t c = 0; c < nc; ++c) {
    ed[c] = exp_nonpos(zr[c] - mx);
    ls += ed[c];
    as += ed[c] * zr[c];
  }
#pragma omp simd
  for (int64_t c = 0; c < nc; ++c) er[c] = static_cast<float>(ed[c]);
  std::fill(er + nc, er + nk, 0.0f);
  j.l[r] = j.l[r] * alpha + ls, j.a[r] = j.a[r] * alpha + as;
  j.m[r] = mx;
  j.alpha[r] = alpha;
}
}  // namespace

void attn_stats(const float* q, const float* k, const float* v, int64_t H, int64_t Hkv, int64_t T, int64_t D, int64_t K,
                float* o, double* lse, float* entropy, int32_t* top_pos, float* top_w) {
  const int64_t G = H / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const int64_t n_tiles = (T + kQueryTile - 1) / kQueryTile;
#pragma omp parallel
  {
    StatsJob j(G, D, K);
#pragma omp for schedule(dynamic, 1)
    for (int64_t job = 0; job < Hkv * n_tiles; ++job) {
      const int64_t kvh = job % Hkv, t0 = (n_tiles - 1 - job / Hkv) * kQueryTile;
      const int64_t nq = std::min(kQueryTile, T - t0), R = G * nq;
      const float* kh = k + kvh * T * D;
      const float* vh = v + kvh * T * D;
      // Row r = g * nq + p is query head kvh * G + g at position t0 + p; rows R .. Rp - 1 are padding.
      load_queries(q, kvh, G, T, t0, nq, D, scale, j.qd);
      std::fill(j.m.begin(), j.m.end(), -INFINITY);
      std::fill(j.l.begin(), j.l.end(), 0.0);
      std::fill(j.a.begin(), j.a.end(), 0.0);
      std::fill(j.alpha.begin(), j.alpha.end(), 1.0);
      std::fill(j.acc.begin(), j.acc.end(), 0.0);
      std::fill(j.tz.begin(), j.tz.end(), -INFINITY);
      std::fill(j.tp.begin(), j.tp.end(), -1);
      std::fill(j.tn.begin(), j.tn.end(), 0);
      const int64_t last = t0 + nq - 1;
      // Key tiles from the latest back: recent keys tend to score high (and a row's latest keys are
      // its own), so the heaps fill with strong entries first and most older tiles fail the
      // tile-max test. The online softmax and the heap's rule do not depend on the order.
      for (int64_t i0 = last / kKeyTile * kKeyTile; i0 >= 0; i0 -= kKeyTile) {
        const int64_t nk = std::min(kKeyTile, last + 1 - i0);
        transpose_keys(kh, i0, nk, D, j.kt.data());
        block_values(vh, i0, nk, D, j.vd.data());
        logits_block(j.qd.data(), j.Rp, j.kt.data(), round_up(nk, kCols), D, j.z.data());
        for (int64_t r = 0; r < R; ++r) softmax_row(j, r, t0 + r % nq, i0, nk);
        values_block(j.e.data(), j.alpha.data(), j.Rp, j.vd.data(), nk, j.Dp, j.acc.data());
      }
      for (int64_t r = 0; r < R; ++r) {
        const int64_t row = (kvh * G + r / nq) * T + t0 + r % nq;
        const double L = j.m[r] + std::log(j.l[r]);
        if (K > 0) heap_sorted(&j.tz[r * K], &j.tp[r * K], K, j.tn[r], j.sorted);
        lse[row] = L;
        entropy[row] = static_cast<float>(std::max(0.0, L - j.a[r] / j.l[r]));
        const double inv = 1.0 / j.l[r];
        for (int64_t x = 0; x < D; ++x) o[row * D + x] = static_cast<float>(j.acc[r * j.Dp + x] * inv);
        for (int64_t s = 0; s < K; ++s) {
          top_pos[row * K + s] = j.tp[r * K + s];
          top_w[row * K + s] = j.tp[r * K + s] < 0 ? 0.0f : static_cast<float>(std::exp(j.tz[r * K + s] - L));
        }
      }
    }
  }
}

// A job is (KV head, 64-key tile): its G heads' queries from the tile's first key to P - 1 run in
// tiles of 16 positions through logits_block, and each key's column sum accumulates in double over
// the queries in ascending order, as ref's does.
void prompt_colsums(const float* q, const float* k, const double* lse, int64_t H, int64_t Hkv, int64_t T, int64_t D,
                    int64_t P, float* colsum) {
  const int64_t G = H / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const int64_t n_tiles = (P + kKeyTile - 1) / kKeyTile;
#pragma omp parallel
  {
    const int64_t Rp = round_up(G * kQueryTile, kRows);
    std::vector<double> qd(Rp * D), kt(D * kKeyTile), z(Rp * kKeyTile), acc(G * kKeyTile);
#pragma omp for schedule(dynamic, 1)
    for (int64_t job = 0; job < Hkv * n_tiles; ++job) {
      const int64_t kvh = job % Hkv, i0 = (job / Hkv) * kKeyTile;  // earliest (longest) tiles first
      const int64_t nk = std::min(kKeyTile, P - i0);
      transpose_keys(k + kvh * T * D, i0, nk, D, kt.data());
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t t0 = i0 / kQueryTile * kQueryTile; t0 < P; t0 += kQueryTile) {
        const int64_t nq = std::min(kQueryTile, P - t0);
        load_queries(q, kvh, G, T, t0, nq, D, scale, qd);
        logits_block(qd.data(), Rp, kt.data(), round_up(nk, kCols), D, z.data());
        for (int64_t g = 0; g < G; ++g)
          for (int64_t p = 0; p < nq; ++p) {
            const int64_t t = t0 + p, nc = std::clamp<int64_t>(t + 1 - i0, 0, nk);
            const double L = lse[(kvh * G + g) * T + t];
            const double* zr = &z[(g * nq + p) * kKeyTile];
            double* ag = &acc[g * kKeyTile];
#pragma omp simd
            for (int64_t c = 0; c < nc; ++c) ag[c] += exp_nonpos(std::min(0.0, zr[c] - L));
          }
      }
      for (int64_t g = 0; g < G; ++g)
        for (int64_t c = 0; c < nk; ++c) colsum[(kvh * G + g) * P + i0 + c] = static_cast<float>(acc[g * kKeyTile + c]);
    }
  }
}

}  // namespace kvsim::omp
