// omp vs ref (style.md): one list of cases per kernel, each run on every built backend against ref.
// Tolerances are declared with the case: |x - ref| <= atol + rtol |ref|; kept sets compare exactly.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>

#include "sim/kernels/backend.h"
#include "sim/kernels/attend.h"
#include "sim/kernels/attn_stats.h"
#include "sim/kernels/omp/exp_f64.h"
#include "sim/kernels/attend.h"
#include "sim/kernels/attn_stats.h"
#include "sim/strategies/strategy.h"
#include "tests/cuda_emulation.h"
#include "tests/cuda_test_util.h"
#include "tests/sim_test_util.h"

using namespace kvsim;
using kvsim::test::Layer;

namespace {

struct Tol {
  double atol, rtol;
};

// Checks every element; on failure reports the worst one, its index and the threshold.
template <class A, class B>
void check_close(const char* what, const A& got, const B& want, Tol tol) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  size_t wi = 0;
  bool ok = true;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    const double excess = std::fabs(g - w) - (tol.atol + tol.rtol * std::fabs(w));
    if (!(excess <= 0)) ok = false;
    if (!(excess <= worst) || i == 0) worst = excess, wi = i;
  }
  INFO(what << ": worst element " << wi << " got " << double(got[wi]) << " ref " << double(want[wi])
            << " threshold " << tol.atol << " + " << tol.rtol << "|ref|");
  CHECK(ok);
}

enum class Data { random, all_equal, huge_negative, sink };

struct StatsCase {
  std::string name;
  int64_t H, Hkv, T, D;
  Data data;
  uint64_t seed;
  Tol tol;
};

void fill(Layer& L, Data d, uint64_t seed) {
  L.fill_random(seed);
  if (d == Data::all_equal) {
    for (auto& x : L.k) x = 0.5f;  // every logit in a row equal: ties everywhere
  } else if (d == Data::huge_negative) {
    for (auto& x : L.q) x *= 300.0f;  // logits of +-1e3..1e4: exp underflows unless max-subtracted
  } else if (d == Data::sink) {
    for (int64_t kv = 0; kv < L.Hkv; ++kv)
      for (int64_t x = 0; x < L.D; ++x) L.K(kv, 0, x) = 40.0f;  // token 0 takes nearly all the mass
    for (auto& x : L.q) x = std::fabs(x);
  }
}

const std::vector<StatsCase>& stats_cases() {
  // Sizes off powers of two and past a warp; tolerances: o is accumulated in float on omp (1e-5);
  // lse and entropy in double on both (1e-9 relative is the double summation-order noise, times |z|).
  static const std::vector<StatsCase> c = {
      {"T1_seed1", 2, 1, 1, 4, Data::random, 1, {1e-6, 1e-5}},
      {"T31_seed2", 4, 2, 31, 8, Data::random, 2, {1e-6, 1e-5}},
      {"T33_seed3", 4, 4, 33, 16, Data::random, 3, {1e-6, 1e-5}},
      {"T97_seed4", 6, 2, 97, 12, Data::random, 4, {1e-6, 1e-5}},
      {"T129_D3_seed5", 3, 1, 129, 3, Data::random, 5, {1e-6, 1e-5}},
      {"all_equal_T97", 2, 1, 97, 8, Data::all_equal, 6, {1e-6, 1e-5}},
      {"huge_negative_T33", 2, 2, 33, 8, Data::huge_negative, 7, {1e-5, 1e-5}},
      {"sink_T65", 4, 2, 65, 8, Data::sink, 8, {1e-6, 1e-5}},
      {"T4097_seed9", 2, 1, 4097, 8, Data::random, 9, {1e-6, 1e-5}},
  };
  return c;
}

// The fast backends of the statistics. "cuda-host" is the host emulation of the CUDA kernel
// (tests/cuda_emulation.h): the core functions ref runs (sim/kernels/attn_stats_core.h) in the
// kernel's mapping (64-row blocks, staged tiles), so it must agree bit for bit. ref itself is
// checked against a dense softmax in tests/test_kernels_direct.cpp.
enum class StatsImpl { omp, cuda_host, cuda };

void stats_with(StatsImpl impl, const LayerView& lv, const ExactStats& r, int64_t P, ExactStats& o,
                std::vector<float>& colsums) {
  switch (impl) {
    case StatsImpl::omp:
      compute_exact_stats(lv, Backend::omp, o);
      compute_prompt_colsums(lv, r, P, Backend::omp, colsums);
      return;
    case StatsImpl::cuda:
      compute_exact_stats(lv, Backend::cuda, o);
      compute_prompt_colsums(lv, r, P, Backend::cuda, colsums);
      return;
    case StatsImpl::cuda_host:
      o.resize(lv.H, lv.T, lv.D);
      test::emulate_attn_stats(lv.q, lv.k, lv.v, lv.H, lv.Hkv, lv.T, lv.D, o.K, o.o.data(), o.lse.data(),
                               o.entropy.data(), o.top_pos.data(), o.top_w.data());
      colsums.assign(lv.H * P, 0.0f);
      test::emulate_prompt_colsums(lv.q, lv.k, r.lse.data(), lv.H, lv.Hkv, lv.T, lv.D, P, colsums.data());
      return;
  }
}

void check_stats_backend(StatsImpl impl) {
  const bool exact = impl == StatsImpl::cuda_host;
  for (const auto& c : stats_cases()) {
    SUBCASE(c.name.c_str()) {
      Layer L(c.H, c.Hkv, c.T, c.D);
      fill(L, c.data, c.seed);
      LayerView lv = L.view();
      ExactStats r, o;
      compute_exact_stats(lv, Backend::ref, r);
      std::vector<float> cr, co;
      const int64_t P = std::max<int64_t>(1, c.T / 2);
      compute_prompt_colsums(lv, r, P, Backend::ref, cr);
      stats_with(impl, lv, r, P, o, co);
      if (exact) {  // the emulation runs ref's operations in ref's order
        CHECK(o.o == r.o);
        CHECK(o.lse == r.lse);
        CHECK(o.entropy == r.entropy);
        CHECK(o.top_pos == r.top_pos);
        CHECK(o.top_w == r.top_w);
        CHECK(co == cr);
        continue;
      }
      // cuda differs from ref by the device's exp/log (1 ulp in double); omp by its summation order.
      check_close("o", o.o, r.o, c.tol);
      check_close("lse", o.lse, r.lse, {1e-9, 1e-12});
      check_close("entropy", o.entropy, r.entropy, {1e-6, 1e-6});
      // Top-K positions compared as sets per row (and both must be sorted by the same rule).
      int64_t bad = 0;
      for (int64_t row = 0; row < c.H * c.T; ++row) {
        std::set<int32_t> a(r.top_pos.begin() + row * r.K, r.top_pos.begin() + (row + 1) * r.K);
        std::set<int32_t> b(o.top_pos.begin() + row * o.K, o.top_pos.begin() + (row + 1) * o.K);
        if (a != b && bad++ == 0)
          FAIL_CHECK("row " << row << ": ref " << test::set_str(a) << " fast " << test::set_str(b));
      }
      CHECK(bad == 0);
      check_close("top_w", o.top_w, r.top_w, {1e-7, 1e-5});
      check_close("prompt_colsums", co, cr, {1e-6, 1e-6});
      if (c.data == Data::all_equal) {
        // Ties: the lowest positions win. Entropy of an all-equal row over t+1 tokens is ln(t+1).
        for (int64_t t = 0; t < c.T; ++t)
          for (int64_t j = 0; j < std::min<int64_t>(r.K, t + 1); ++j) CHECK(r.top_pos[t * r.K + j] == j);
        for (int64_t t = 0; t < c.T; ++t) CHECK(r.entropy[t] == doctest::Approx(std::log(double(t + 1))).epsilon(1e-6));
      }
    }
  }
}

}  // namespace

TEST_CASE("backends: attn_stats omp vs ref on the harness cases") {
  if (!backend_available(Backend::omp)) {
    MESSAGE("skipped: omp backend not built");
    return;
  }
  check_stats_backend(StatsImpl::omp);
}

TEST_CASE("cuda-host: attn_stats kernel arithmetic (host emulation) equals ref bit for bit on the harness cases") {
  check_stats_backend(StatsImpl::cuda_host);
}

TEST_CASE("cuda: attn_stats on the device vs ref on the harness cases") {
  if (!test::cuda_device_or_skip()) return;
  check_stats_backend(StatsImpl::cuda);
}

namespace {

struct AttendCase {
  const char* name;
  int64_t G, n, D;
  Data data;
  uint64_t seed;
  int64_t n_views;  // > 1: slots alternate between views 0..n_views (sim/strategies/slot.h)
};

const AttendCase kAttendCases[] = {
    {"n1", 1, 1, 4, Data::random, 1, 1},          {"n31", 4, 31, 8, Data::random, 2, 1},
    {"n33", 2, 33, 16, Data::random, 3, 1},       {"n97", 3, 97, 12, Data::random, 4, 1},
    {"equal", 2, 33, 8, Data::all_equal, 5, 1},   {"huge_neg", 2, 31, 8, Data::huge_negative, 6, 1},
    {"views3_n45", 2, 45, 8, Data::random, 7, 3}, {"n300_D64", 4, 300, 64, Data::random, 8, 1}};

struct AttendOut {
  std::vector<double> logit;
  std::vector<float> w, o;
};

struct AttendInput {
  Layer L;
  std::vector<float> bias;
  std::vector<int32_t> view;
  explicit AttendInput(const AttendCase& c) : L(c.G, 1, c.n, c.D), bias(c.n), view(c.n, 0) {
    fill(L, c.data, c.seed);
    for (int64_t s = 0; s < c.n; ++s) bias[s] = (s % 3 == 0) ? std::log(float(1 + s % 5)) : 0.0f;
    if (c.n_views > 1)
      for (int64_t s = 0; s < c.n; ++s) view[s] = static_cast<int32_t>(s % (c.n_views + 1));
  }
  const int32_t* views(const AttendCase& c) const { return c.n_views > 1 ? view.data() : nullptr; }
  SlotsView slots(const AttendCase& c) const {
    return SlotsView{L.k.data(), L.v.data(), bias.data(), views(c), c.n, c.n_views};
  }
};

template <class Fn>
AttendOut attend_with(Fn fn, const AttendCase& c, const AttendInput& in) {
  AttendOut out{std::vector<double>(c.G * c.n), std::vector<float>(c.G * c.n), std::vector<float>(c.G * c.D)};
  fn(in.L.q.data(), c.D, c.G, c.D, in.slots(c), out.logit.data(), out.w.data(), out.o.data());
  return out;
}

// The CUDA kernel's arithmetic on the host, behind attend_slots' signature (one-request batch).
void emulated_attend_slots(const float* q, int64_t q_stride, int64_t G, int64_t D, const SlotsView& slots,
                           double* logit, float* w, float* o_hat) {
  cuda::AttendBatch b;
  b.clear(D);
  b.add(q, q_stride, G, slots);
  test::emulate_attend_batch(b);
  std::copy(b.logit.begin(), b.logit.end(), logit);
  std::copy(b.w.begin(), b.w.end(), w);
  std::copy(b.o_hat.begin(), b.o_hat.end(), o_hat);
}

}  // namespace

TEST_CASE("backends: attend_slots omp vs ref") {
  for (const auto& c : kAttendCases) {
    SUBCASE(c.name) {
      AttendInput in(c);
      const AttendOut r = attend_with(ref::attend_slots, c, in), o = attend_with(omp::attend_slots, c, in);
      // Logits: double on both, summation order differs (simd): 1e-12 relative.
      check_close("logit", o.logit, r.logit, {1e-9, 1e-12});
      // Weights and outputs: double on both, summation order differs.
      check_close("w", o.w, r.w, {1e-7, 1e-5});
      check_close("o_hat", o.o, r.o, {1e-6, 1e-5});
    }
  }
}

TEST_CASE("cuda-host: attend kernel arithmetic (host emulation) equals ref bit for bit, one request and a batch") {
  for (const auto& c : kAttendCases) {
    SUBCASE(c.name) {
      AttendInput in(c);
      const AttendOut r = attend_with(ref::attend_slots, c, in), e = attend_with(emulated_attend_slots, c, in);
      CHECK(e.logit == r.logit);
      CHECK(e.w == r.w);
      CHECK(e.o == r.o);
    }
  }
  // All cases in one batch (the replay's lockstep form): each request's outputs equal its own ref call.
  std::vector<std::unique_ptr<AttendInput>> ins;
  cuda::AttendBatch b;
  b.clear(8);
  std::vector<const AttendCase*> used;
  for (const auto& c : kAttendCases)
    if (c.D == 8) {
      ins.push_back(std::make_unique<AttendInput>(c));
      used.push_back(&c);
      b.add(ins.back()->L.q.data(), c.D, c.G, ins.back()->slots(c));
    }
  REQUIRE(used.size() >= 3);
  test::emulate_attend_batch(b);
  for (size_t i = 0; i < used.size(); ++i) {
    const AttendCase& c = *used[i];
    const AttendOut r = attend_with(ref::attend_slots, c, *ins[i]);
    INFO("batch request " << i << " (" << c.name << ")");
    CHECK(std::equal(r.logit.begin(), r.logit.end(), b.logit_of(int64_t(i))));
    CHECK(std::equal(r.w.begin(), r.w.end(), b.w_of(int64_t(i))));
    CHECK(std::equal(r.o.begin(), r.o.end(), b.o_hat_of(int64_t(i))));
  }
}

TEST_CASE("cuda: attend_slots on the device vs ref") {
  if (!test::cuda_device_or_skip()) return;
  for (const auto& c : kAttendCases) {
    SUBCASE(c.name) {
      AttendInput in(c);
      const AttendOut r = attend_with(ref::attend_slots, c, in), g = attend_with(cuda::attend_slots, c, in);
      // The logits are the same double operations in the same order: exact. The weights differ by the
      // device's double exp (1 ulp), far below float resolution.
      CHECK(g.logit == r.logit);
      check_close("w", g.w, r.w, {1e-9, 1e-6});
      check_close("o_hat", g.o, r.o, {1e-7, 1e-6});
    }
  }
}

void check_kept_sets(Backend fast) {
  const char* specs[] = {"window:budget=9",        "streaming:budget=9,sinks=2", "h2o:budget=9,recent=3",
                         "h2o:budget=9,recent=2,norm=mean,gqa=max",           "tova:budget=9",
                         "scissorhands:budget=9,recent=2,history=5",          "snapkv:budget=12,window=4",
                         "pyramidkv:budget=12,window=4",                      "knorm:budget=9,recent=1",
                         "random:budget=9,seed=5",                            "h2o:budget=200"};
  struct Case {
    const char* name;
    int64_t T, P;
    Data data;
  };
  const Case cases[] = {{"T31", 31, 13, Data::random}, {"T33", 33, 20, Data::sink}, {"T97", 97, 40, Data::random},
                        {"all_equal_T33", 33, 14, Data::all_equal}, {"huge_negative_T31", 31, 16, Data::huge_negative}};
  for (const auto& c : cases)
    for (const char* spec : specs) {
      Layer L(4, 2, c.T, 8);
      fill(L, c.data, 1234);
      auto s = make_strategy(spec);
      auto r = test::kept_sets(*s, L, c.P, Backend::ref, 1, 3);
      auto o = test::kept_sets(*s, L, c.P, fast, 1, 3);
      for (size_t step = 0; step < r.size(); ++step)
        for (size_t kv = 0; kv < r[step].size(); ++kv) {
          if (r[step][kv] == o[step][kv]) continue;
          FAIL_CHECK(c.name << " " << spec << " step " << step << " kv " << kv << ": ref "
                            << test::set_str(r[step][kv]) << " " << backend_name(fast) << " "
                            << test::set_str(o[step][kv]));
          step = r.size();
          break;
        }
    }
}

TEST_CASE("backends: kept sets of every strategy agree exactly between omp and ref") {
  if (!backend_available(Backend::omp)) {
    MESSAGE("skipped: omp backend not built");
    return;
  }
  check_kept_sets(Backend::omp);
}

TEST_CASE("cuda: kept sets of every strategy agree exactly between the device and ref") {
  if (!test::cuda_device_or_skip()) return;
  check_kept_sets(Backend::cuda);
}

TEST_CASE("backends: cuda without a CUDA build or a device is refused with the reason, never a fallback") {
  std::string why;
  if (backend_available(Backend::cuda, &why)) {
    MESSAGE("a CUDA device is present: the cuda cases above ran");
    return;
  }
  CHECK_THROWS_WITH_AS(require_backend(Backend::cuda), why.c_str(), NotCompiled);
  CHECK(why.rfind("backend cuda: ", 0) == 0);
}

TEST_CASE("backends: omp exp_nonpos matches std::exp to 5e-16 relative on [-700, 0]") {
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
