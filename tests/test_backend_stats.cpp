// Attention statistics (sim/kernels/attn_stats.h: attn_stats and prompt_colsums), the harness's
// family (tests/backend_harness.h): one case list, every case on omp, cuda-host and cuda against
// ref; and ref itself against a direct softmax and answers known by hand.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "sim/exact_stats.h"
#include "sim/kernels/omp/exp_f64.h"
#include "tests/backend_harness.h"
#include "tests/sim_test_util.h"

using namespace kvsim;
using test::Data;
using test::Layer;
using test::Target;
using test::Tol;

namespace {

// Per output, for the targets that are not bit-exact (omp, cuda); the host emulation runs ref's
// operations in ref's order and must equal it bit for bit.
struct StatsTol {
  Tol o, lse, entropy, top_w, colsums;
};
// omp sums in another order (register blocks with FMAs, key tiles latest first, a vectorised double
// exp) and sums each key tile's values in float (sim/kernels/omp/attn_stats.cpp: ~5e-7 relative
// typical, 4e-6 at worst, then double across tiles); the device differs from ref by its double exp
// and log (1 ulp); cuda accumulates o in double and rounds it to float once. lse and entropy are
// double, 1e-12 relative is summation-order noise on |z|.
constexpr StatsTol kStatsTol{{1e-6, 1e-5}, {1e-9, 1e-12}, {1e-6, 1e-6}, {1e-7, 1e-5}, {1e-6, 1e-6}};

struct StatsCase {
  const char* name;
  int64_t H, Hkv, T, D;
  Data data;
  uint64_t seed;
  StatsTol tol = kStatsTol;
};

// Sizes off powers of two and past a warp, the CUDA kernel's 64-row tiles (T = 129) and 4097.
const StatsCase kStatsCases[] = {
    {"T1_seed1", 2, 1, 1, 4, Data::random, 1},
    {"T31_seed2", 4, 2, 31, 8, Data::random, 2},
    {"T33_seed3", 4, 4, 33, 16, Data::random, 3},
    {"T97_seed4", 6, 2, 97, 12, Data::random, 4},
    {"T129_D3_seed5", 3, 1, 129, 3, Data::random, 5},
    {"all_equal_T97_seed6", 2, 1, 97, 8, Data::all_equal, 6},
    {"huge_negative_T33_seed7", 2, 2, 33, 8, Data::huge_negative, 7},
    {"sink_T65_seed8", 4, 2, 65, 8, Data::sink, 8},
    {"T4097_seed9", 2, 1, 4097, 8, Data::random, 9},
};

void stats_with(const Kernels& k, const LayerView& lv, const ExactStats& r, int64_t P, ExactStats& o,
                std::vector<float>& colsums) {
  o.resize(lv.H, lv.T, lv.D);
  k.attn_stats(lv.q, lv.k, lv.v, lv.H, lv.Hkv, lv.T, lv.D, o.K, o.o.data(), o.lse.data(), o.entropy.data(),
               o.top_pos.data(), o.top_w.data());
  // From ref's lse: the column sums are checked apart from any difference in lse.
  colsums.assign(lv.H * P, 0.0f);
  k.prompt_colsums(lv.q, lv.k, r.lse.data(), lv.H, lv.Hkv, lv.T, lv.D, P, colsums.data());
}

// Top-K positions as sets per row: a fast target may order near-equal weights differently.
void check_top_sets(const ExactStats& got, const ExactStats& ref) {
  int64_t bad = 0;
  for (int64_t row = 0; row < ref.H * ref.T; ++row) {
    std::set<int32_t> a(ref.top_pos.begin() + row * ref.K, ref.top_pos.begin() + (row + 1) * ref.K);
    std::set<int32_t> b(got.top_pos.begin() + row * got.K, got.top_pos.begin() + (row + 1) * got.K);
    if (a != b && bad++ == 0)
      FAIL_CHECK("top_pos row " << row << ": ref " << test::set_str(a) << " got " << test::set_str(b));
  }
  CHECK(bad == 0);
}

void check_stats(Target t) {
  const Kernels& k = test::target_kernels(t);
  const bool exact = t == Target::cuda_host;
  for (const auto& c : kStatsCases) {
    SUBCASE(c.name) {
      Layer L(c.H, c.Hkv, c.T, c.D);
      test::fill(L, c.data, c.seed);
      LayerView lv = L.view();
      ExactStats r, o;
      compute_exact_stats(lv, Backend::ref, r);
      std::vector<float> cr, co;
      const int64_t P = std::max<int64_t>(1, c.T / 2);
      compute_prompt_colsums(lv, r, P, Backend::ref, cr);
      stats_with(k, lv, r, P, o, co);
      test::check_close("o", o.o, r.o, exact ? test::kBitExact : c.tol.o);
      test::check_close("lse", o.lse, r.lse, exact ? test::kBitExact : c.tol.lse);
      test::check_close("entropy", o.entropy, r.entropy, exact ? test::kBitExact : c.tol.entropy);
      if (exact)
        test::check_close("top_pos", o.top_pos, r.top_pos, test::kBitExact);
      else
        check_top_sets(o, r);
      test::check_close("top_w", o.top_w, r.top_w, exact ? test::kBitExact : c.tol.top_w);
      test::check_close("prompt_colsums", co, cr, exact ? test::kBitExact : c.tol.colsums);
    }
  }
}

}  // namespace

KVSIM_BACKEND_TEST_CASES("attn_stats and prompt_colsums vs ref on the harness cases", check_stats)

TEST_CASE("ref: attn_stats agrees with a direct softmax (T x T, tiny)") {
  Layer L(2, 1, 70, 5);
  L.fill_random(11);
  LayerView lv = L.view();
  ExactStats r;
  compute_exact_stats(lv, Backend::ref, r);
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t t : {0, 1, 63, 64, 65, 69}) {
      std::vector<double> z(t + 1);
      double mx = -INFINITY, sum = 0, ent = 0;
      for (int64_t i = 0; i <= t; ++i) {
        double d = 0;
        for (int64_t x = 0; x < 5; ++x) d += double(L.Q(h, t, x)) * L.K(0, i, x);
        z[i] = d / std::sqrt(5.0);
        mx = std::max(mx, z[i]);
      }
      for (double zi : z) sum += std::exp(zi - mx);
      const double lse = mx + std::log(sum);
      std::vector<double> o(5, 0.0);
      for (int64_t i = 0; i <= t; ++i) {
        const double p = std::exp(z[i] - lse);
        ent -= p * std::log(p);
        for (int64_t x = 0; x < 5; ++x) o[x] += p * L.V(0, i, x);
      }
      CHECK(r.lse[h * 70 + t] == doctest::Approx(lse).epsilon(1e-12));
      CHECK(r.entropy[h * 70 + t] == doctest::Approx(ent).epsilon(1e-6));
      for (int64_t x = 0; x < 5; ++x) CHECK(r.o[(h * 70 + t) * 5 + x] == doctest::Approx(o[x]).epsilon(1e-6));
    }
}

TEST_CASE("ref: attn_stats on all-equal scores: ties to the lowest positions, entropy ln(t + 1)") {
  Layer L(2, 1, 97, 8);
  test::fill(L, Data::all_equal, 6);
  ExactStats r;
  compute_exact_stats(L.view(), Backend::ref, r);
  for (int64_t t = 0; t < L.T; ++t)
    for (int64_t j = 0; j < std::min<int64_t>(r.K, t + 1); ++j) CHECK(r.top_pos[t * r.K + j] == j);
  for (int64_t t = 0; t < L.T; ++t) CHECK(r.entropy[t] == doctest::Approx(std::log(double(t + 1))).epsilon(1e-6));
}

TEST_CASE("omp: log_pos matches std::log on normal doubles (4e-16 relative, 2e-16 absolute near 1)") {
  double worst = 0, at = 0;
  for (int i = 0; i <= 200000; ++i) {
    // 1e-307 .. 1e307 logarithmically, and a dense band around 1.
    const double x = i % 2 ? std::pow(10.0, -307.0 + 614.0 * i / 200000.0) : 1.0 + (i - 100000) * 1e-6 + 1e-13;
    const double want = std::log(x), got = omp::log_pos(x);
    const double err = std::fabs(got - want) / std::max(std::fabs(want), 1.0);
    if (err > worst) worst = err, at = x;
  }
  INFO("worst error " << worst << " at x = " << at);
  CHECK(worst < 4e-16);
  CHECK(omp::log_pos(1.0) == 0.0);
  CHECK(omp::log_pos(2.0) == doctest::Approx(std::log(2.0)).epsilon(1e-15));
}

TEST_CASE("omp: exp_nonpos matches std::exp to 5e-16 relative on [-700, 0]") {
  double worst = 0, at = 0;
  for (int i = 0; i <= 200000; ++i) {
    const double x = -700.0 * i / 200000.0 - (i % 7) * 1e-9;
    const double want = std::exp(x), got = omp::exp_nonpos(x);
    const double rel = std::fabs(got - want) / want;
    if (rel > worst) worst = rel, at = x;
  }
  INFO("worst relative error " << worst << " at x = " << at);
  CHECK(worst < 5e-16);  // ~2 ulp: Horner rounding plus std::exp's own half ulp
  CHECK(omp::exp_nonpos(0.0) == 1.0);
  CHECK(omp::exp_nonpos(-1e6) < 1e-300);
}
