// kvsim::ref's attention kernels against direct implementations written in this file from the
// definitions (design.md §3, §4), independently of the kernels' cores (sim/kernels/*_core.h, which
// ref, the CUDA kernels and their host emulation all run):
//   attn_stats      a dense softmax over the whole row 0..t in double (no tiles, no online
//                   rescaling), the entropy as -sum p log p, the top-K by sorting every position
//                   (higher logit first, then the lower position);
//   prompt_colsums  the sum of those dense rows' weights over the prompt's queries;
//   attend_slots    per view, a plain softmax over the slots that view sees, averaged over views.
// Tolerances are declared with each comparison, |x - direct| <= atol + rtol |direct|, with why.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "sim/exact_stats.h"
#include "sim/kernels/attend.h"
#include "sim/kernels/attn_stats.h"
#include "tests/sim_test_util.h"

using namespace kvsim;
using kvsim::test::Layer;

namespace {

constexpr double kFloatUlp = 0x1p-23;  // spacing of floats in [1, 2): one rounding to float is <= half of it

struct Tol {
  double atol, rtol;
};

// Checks got[i] against want[i] for i < n; on failure reports the worst element, its index and the threshold.
template <class Got, class Want, class TolOf>
void check_close(const std::string& what, int64_t n, Got got, Want want, TolOf tol_of) {
  if (n == 0) return;
  double worst = -INFINITY;
  int64_t wi = 0;
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) {
    const double g = got(i), w = want(i);
    const Tol t = tol_of(i);
    const double excess = std::fabs(g - w) - (t.atol + t.rtol * std::fabs(w));
    if (!(excess <= 0)) ok = false;  // NaN fails
    if (!(excess <= worst)) worst = excess, wi = i;
  }
  const Tol t = tol_of(wi);
  INFO(what << ": worst element " << wi << " got " << got(wi) << " direct " << want(wi) << " threshold " << t.atol
            << " + " << t.rtol << "|direct|");
  CHECK(ok);
}

// ---- the direct implementations ----------------------------------------------------------------

// One query row: logits z_i = q·k_i / sqrt(D) over i = 0..t and everything derived from them.
struct DirectRow {
  std::vector<double> z, p;  // [t + 1]
  double lse = 0, entropy = 0;
  std::vector<double> o;       // [D]
  std::vector<int32_t> order;  // [t + 1] positions by (z descending, position ascending)
};

DirectRow direct_row(const float* qt,  // [D]
                     const float* kh,  // [T, D]
                     const float* vh,  // [T, D]
                     int64_t t, int64_t D) {
  DirectRow r;
  r.z.resize(t + 1), r.p.resize(t + 1), r.o.assign(D, 0.0);
  for (int64_t i = 0; i <= t; ++i) {
    double d = 0;
    for (int64_t x = 0; x < D; ++x) d += static_cast<double>(qt[x]) * kh[i * D + x];
    r.z[i] = d / std::sqrt(static_cast<double>(D));
  }
  const double mx = *std::max_element(r.z.begin(), r.z.end());
  double sum = 0;
  for (double zi : r.z) sum += std::exp(zi - mx);
  r.lse = mx + std::log(sum);
  for (int64_t i = 0; i <= t; ++i) {
    r.p[i] = std::exp(r.z[i] - mx) / sum;
    if (r.p[i] > 0) r.entropy -= r.p[i] * std::log(r.p[i]);
    for (int64_t x = 0; x < D; ++x) r.o[x] += r.p[i] * vh[i * D + x];
  }
  r.order.resize(t + 1);
  std::iota(r.order.begin(), r.order.end(), 0);
  std::sort(r.order.begin(), r.order.end(),
            [&](int32_t a, int32_t b) { return r.z[a] > r.z[b] || (r.z[a] == r.z[b] && a < b); });
  return r;
}

// ---- the cases -----------------------------------------------------------------------------------

enum class Data { random, all_equal, huge_negative, ties, sink };

struct StatsCase {
  const char* name;
  int64_t H, Hkv, T, D;
  Data data;
  uint64_t seed;
};

// T off powers of two, past a warp and past the 64-key tiles of the cores (64, 128).
const StatsCase kStatsCases[] = {{"T1_seed1", 2, 1, 1, 4, Data::random, 1},
                                 {"T31_seed2", 4, 2, 31, 8, Data::random, 2},
                                 {"T33_seed3", 4, 4, 33, 16, Data::random, 3},
                                 {"T97_seed4", 6, 2, 97, 12, Data::random, 4},
                                 {"T130_D3_seed5", 3, 1, 130, 3, Data::random, 5},
                                 {"all_equal_T97", 2, 1, 97, 8, Data::all_equal, 6},
                                 {"huge_negative_T97", 2, 2, 97, 8, Data::huge_negative, 7},
                                 {"ties_T97", 4, 2, 97, 8, Data::ties, 8},
                                 {"sink_T65", 4, 2, 65, 8, Data::sink, 9}};

void fill(Layer& L, Data d, uint64_t seed) {
  L.fill_random(seed);
  switch (d) {
    case Data::random: break;
    case Data::all_equal:  // every logit of a row equal: the top-K is positions 0, 1, 2, ...
      for (auto& x : L.k) x = 0.5f;
      break;
    case Data::huge_negative:  // every logit in about -1e3..-1e4: exp(z) underflows unless the max is subtracted
      for (auto& x : L.q) x = -1000.0f * (std::fabs(x) + 0.5f);
      for (auto& x : L.k) x = std::fabs(x) + 0.5f;
      break;
    case Data::ties:  // key i = key i % 5: each logit repeats exactly every 5 positions
      for (int64_t kv = 0; kv < L.Hkv; ++kv)
        for (int64_t i = 5; i < L.T; ++i)
          for (int64_t x = 0; x < L.D; ++x) L.K(kv, i, x) = L.K(kv, i % 5, x);
      break;
    case Data::sink:  // token 0 takes nearly all the mass
      for (int64_t kv = 0; kv < L.Hkv; ++kv)
        for (int64_t x = 0; x < L.D; ++x) L.K(kv, 0, x) = 40.0f;
      for (auto& x : L.q) x = std::fabs(x);
      break;
  }
}

struct RefStats {
  std::vector<float> o, entropy, top_w;
  std::vector<double> lse;
  std::vector<int32_t> top_pos;
};

RefStats run_ref(const Layer& L, int64_t K) {
  RefStats r;
  r.o.resize(L.H * L.T * L.D), r.entropy.resize(L.H * L.T), r.lse.resize(L.H * L.T);
  r.top_pos.resize(L.H * L.T * K), r.top_w.resize(L.H * L.T * K);
  ref::attn_stats(L.q.data(), L.k.data(), L.v.data(), L.H, L.Hkv, L.T, L.D, K, r.o.data(), r.lse.data(),
                  r.entropy.data(), r.top_pos.data(), r.top_w.data());
  return r;
}

// ref's top-K of one row against the sorted order of the direct row. ref ranks by the logit
// rounded to float (its top_w is float), so two logits closer than a float's rounding may come in
// either order; exactly equal logits must put the lower position first. Returns whether the
// positions equal the direct order exactly.
bool check_top_positions(const int32_t* pos,  // [K]
                         const DirectRow& d, int64_t t, int64_t K, const std::string& where) {
  const int64_t n = std::min<int64_t>(K, t + 1);
  std::vector<bool> seen(t + 1, false);
  bool exact = true;
  for (int64_t j = 0; j < K; ++j) {
    if (j >= n) {
      if (pos[j] != -1) FAIL_CHECK(where << ": place " << j << " past t + 1 holds " << pos[j] << ", not -1");
      continue;
    }
    if (pos[j] < 0 || pos[j] > t || seen[pos[j]]) {
      FAIL_CHECK(where << ": place " << j << " holds " << pos[j] << " (outside 0.." << t << " or repeated)");
      return false;
    }
    seen[pos[j]] = true;
    const double zr = d.z[pos[j]], zd = d.z[d.order[j]];
    if (std::fabs(zr - zd) > 2 * kFloatUlp * std::fabs(zd))
      FAIL_CHECK(where << ": place " << j << " holds " << pos[j] << " (logit " << zr << "), the direct top-K "
                       << d.order[j] << " (logit " << zd << ")");
    if (j > 0 && zr == d.z[pos[j - 1]] && pos[j] < pos[j - 1])
      FAIL_CHECK(where << ": equal logits at places " << j - 1 << ", " << j << " in position order " << pos[j - 1]
                       << ", " << pos[j] << ": the lower position must come first");
    exact = exact && pos[j] == d.order[j];
  }
  if (n < t + 1)  // an equal logit left out must have a higher position than the last kept
    for (int64_t i = 0; i <= t; ++i)
      if (!seen[i] && d.z[i] == d.z[pos[n - 1]] && i < pos[n - 1])
        FAIL_CHECK(where << ": position " << i << " left out for the equal-logit " << pos[n - 1]);
  return exact;
}

}  // namespace

TEST_CASE("direct: ref attn_stats equals a dense double softmax, entropy and sorted top-K on the hard cases") {
  const int64_t K = kExactTopK;
  for (const StatsCase& c : kStatsCases) {
    SUBCASE(c.name) {
      Layer L(c.H, c.Hkv, c.T, c.D);
      fill(L, c.data, c.seed);
      const RefStats r = run_ref(L, K);
      const int64_t G = c.H / c.Hkv;
      int64_t inexact_rows = 0;
      for (int64_t h = 0; h < c.H; ++h)
        for (int64_t t = 0; t < c.T; ++t) {
          const int64_t row = h * c.T + t;
          const DirectRow d = direct_row(&L.Q(h, t, 0), &L.K(h / G, 0, 0), &L.V(h / G, 0, 0), t, c.D);
          const std::string where = std::string(c.name) + " h " + std::to_string(h) + " t " + std::to_string(t);
          // lse: double on both sides; online vs dense sums and z * (1/sqrt D) vs z / sqrt D differ in
          // the last bits (|z| up to 1e4 here: 1e-12 absolute).
          check_close(
              where + " lse", 1, [&](int64_t) { return r.lse[row]; }, [&](int64_t) { return d.lse; },
              [](int64_t) {
                return Tol{1e-12, 1e-14};
              });
          // entropy and o: one rounding to float (half a float ulp), plus the double noise; ref's
          // entropy is lse - E[z], which cancels to |z| * 1e-16 when the row is peaked.
          check_close(
              where + " entropy", 1, [&](int64_t) { return r.entropy[row]; }, [&](int64_t) { return d.entropy; },
              [](int64_t) {
                return Tol{1e-9, kFloatUlp};
              });
          check_close(
              where + " o", c.D, [&](int64_t x) { return r.o[row * c.D + x]; }, [&](int64_t x) { return d.o[x]; },
              [](int64_t) {
                return Tol{1e-12, kFloatUlp};
              });
          inexact_rows += !check_top_positions(&r.top_pos[row * K], d, t, K, where);
          // top_w at ref's own positions: ref computes them from the float logit, whose rounding
          // (|z| * 2^-24) becomes a relative error of the weight, plus the final rounding to float
          // (absolute 2^-149 where a weight falls below the float range: huge logits, the sink).
          const int64_t n = std::min<int64_t>(K, t + 1);
          check_close(
              where + " top_w", K, [&](int64_t j) { return r.top_w[row * K + j]; },
              [&](int64_t j) { return j < n ? d.p[r.top_pos[row * K + j]] : 0.0; },
              [&](int64_t j) {
                return Tol{0x1p-149, j < n ? kFloatUlp * (1 + std::fabs(d.z[r.top_pos[row * K + j]])) : 0.0};
              });
        }
      // Exact ties (all_equal, ties) are decided by the position rule, never by rounding.
      if (c.data == Data::all_equal || c.data == Data::ties) CHECK(inexact_rows == 0);
      MESSAGE(std::string(c.name) << ": " << inexact_rows
                                  << " rows whose top-K order differs from the direct sort within float rounding");
    }
  }
}

TEST_CASE("direct: ref attn_stats on all-equal logits: the lowest positions, weights 1/(t+1), entropy ln(t+1)") {
  Layer L(1, 1, 97, 8);
  fill(L, Data::all_equal, 6);
  const int64_t K = kExactTopK;
  const RefStats r = run_ref(L, K);
  for (int64_t t = 0; t < L.T; ++t) {
    for (int64_t j = 0; j < K; ++j) {
      CHECK(r.top_pos[t * K + j] == (j <= t ? j : -1));
      CHECK(r.top_w[t * K + j] == doctest::Approx(j <= t ? 1.0 / double(t + 1) : 0.0).epsilon(kFloatUlp));
    }
    CHECK(r.entropy[t] == doctest::Approx(std::log(double(t + 1))).epsilon(kFloatUlp));
  }
}

TEST_CASE("direct: ref prompt_colsums equals the column sums of the dense rows on the hard cases") {
  for (const StatsCase& c : kStatsCases) {
    SUBCASE(c.name) {
      Layer L(c.H, c.Hkv, c.T, c.D);
      fill(L, c.data, c.seed);
      const RefStats r = run_ref(L, 0);
      const int64_t G = c.H / c.Hkv;
      for (int64_t P : {int64_t{1}, std::max<int64_t>(1, c.T / 2), c.T}) {
        std::vector<float> colsum(c.H * P);
        ref::prompt_colsums(L.q.data(), L.k.data(), r.lse.data(), c.H, c.Hkv, c.T, c.D, P, colsum.data());
        std::vector<double> want(c.H * P, 0.0);
        for (int64_t h = 0; h < c.H; ++h)
          for (int64_t j = 0; j < P; ++j) {
            const DirectRow d = direct_row(&L.Q(h, j, 0), &L.K(h / G, 0, 0), &L.V(h / G, 0, 0), j, c.D);
            for (int64_t i = 0; i <= j; ++i) want[h * P + i] += d.p[i];
          }
        // A sum of at most T weights in double, rounded once to float; ref uses ref's lse, which
        // agrees with the direct one to 1e-12 (above).
        check_close(
            std::string(c.name) + " P " + std::to_string(P), c.H * P, [&](int64_t i) { return colsum[i]; },
            [&](int64_t i) { return want[i]; },
            [](int64_t) {
              return Tol{1e-12, kFloatUlp};
            });
      }
    }
  }
}

namespace {

struct AttendCase {
  const char* name;
  int64_t G, n, D;
  Data data;
  uint64_t seed;
  int64_t n_views;  // > 1: slot s is in view s % (n_views + 1) (view 0: seen by every view)
};

const AttendCase kAttendCases[] = {{"n1", 1, 1, 4, Data::random, 1, 1},
                                   {"n31", 4, 31, 8, Data::random, 2, 1},
                                   {"n33", 2, 33, 16, Data::random, 3, 1},
                                   {"n97", 3, 97, 12, Data::random, 4, 1},
                                   {"all_equal_n33", 2, 33, 8, Data::all_equal, 5, 1},
                                   {"huge_negative_n31", 2, 31, 8, Data::huge_negative, 6, 1},
                                   {"ties_n33", 2, 33, 8, Data::ties, 7, 1},
                                   {"views3_n45", 2, 45, 8, Data::random, 8, 3},
                                   {"views2_n1", 1, 1, 8, Data::random, 9, 2}};

}  // namespace

TEST_CASE("direct: ref attend_slots equals a softmax per view averaged over the views") {
  for (const AttendCase& c : kAttendCases) {
    SUBCASE(c.name) {
      Layer L(c.G, 1, c.n, c.D);  // q: [G, n, D], row g at g * n * D; keys and values: [n, D]
      fill(L, c.data, c.seed);
      std::vector<float> bias(c.n);
      std::vector<int32_t> view(c.n, 0);
      for (int64_t s = 0; s < c.n; ++s) bias[s] = (s % 3 == 0) ? std::log(float(1 + s % 5)) : 0.0f;
      if (c.n_views > 1)
        for (int64_t s = 0; s < c.n; ++s) view[s] = static_cast<int32_t>(s % (c.n_views + 1));
      const SlotsView slots{L.k.data(), L.v.data(), bias.data(), c.n_views > 1 ? view.data() : nullptr, c.n, c.n_views};
      std::vector<double> logit(c.G * c.n);
      std::vector<float> w(c.G * c.n), o(c.G * c.D);
      ref::attend_slots(L.q.data(), c.n * c.D, c.G, c.D, slots, logit.data(), w.data(), o.data());
      for (int64_t g = 0; g < c.G; ++g) {
        const float* qg = L.q.data() + g * c.n * c.D;
        std::vector<double> z(c.n), p(c.n, 0.0), od(c.D, 0.0);
        for (int64_t s = 0; s < c.n; ++s) {
          double d = 0;
          for (int64_t x = 0; x < c.D; ++x) d += static_cast<double>(qg[x]) * L.K(0, s, x);
          z[s] = d / std::sqrt(static_cast<double>(c.D)) + bias[s];
        }
        for (int64_t j = 1; j <= c.n_views; ++j) {
          auto sees = [&](int64_t s) { return c.n_views == 1 || view[s] == 0 || view[s] == j; };
          double mx = -INFINITY, sum = 0;
          for (int64_t s = 0; s < c.n; ++s)
            if (sees(s)) mx = std::max(mx, z[s]);
          for (int64_t s = 0; s < c.n; ++s)
            if (sees(s)) sum += std::exp(z[s] - mx);
          for (int64_t s = 0; s < c.n; ++s)
            if (sees(s)) p[s] += std::exp(z[s] - mx) / sum / static_cast<double>(c.n_views);
        }
        for (int64_t s = 0; s < c.n; ++s)
          for (int64_t x = 0; x < c.D; ++x) od[x] += p[s] * L.V(0, s, x);
        const std::string where = std::string(c.name) + " g " + std::to_string(g);
        // Logits: double on both sides, z * (1/sqrt D) against z / sqrt D: the last bits.
        check_close(
            where + " logit", c.n, [&](int64_t s) { return logit[g * c.n + s]; }, [&](int64_t s) { return z[s]; },
            [](int64_t) {
              return Tol{1e-12, 1e-14};
            });
        // Weights and output: one rounding to float plus the double noise.
        check_close(
            where + " w", c.n, [&](int64_t s) { return w[g * c.n + s]; }, [&](int64_t s) { return p[s]; },
            [](int64_t) {
              return Tol{1e-15, kFloatUlp};
            });
        check_close(
            where + " o_hat", c.D, [&](int64_t x) { return o[g * c.D + x]; }, [&](int64_t x) { return od[x]; },
            [](int64_t) {
              return Tol{1e-12, kFloatUlp};
            });
      }
    }
  }
}
