// Compressed attention (sim/kernels/attend.h: attend_slots), the harness's family
// (tests/backend_harness.h): one case list, every case on omp, cuda-host and cuda against ref;
// the kept sets every strategy reaches when its decode steps attend on the target (exactly ref's);
// and the CUDA path's batched form, the replay's lockstep launch.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "cuda/attend.h"
#include "sim/base/error.h"
#include "sim/strategies/strategy.h"
#include "tests/backend_harness.h"
#include "tests/cuda_emulation.h"
#include "tests/sim_test_util.h"

using namespace kvsim;
using test::Data;
using test::Layer;
using test::Target;
using test::Tol;

namespace {

// Per output, for omp and cuda; the host emulation equals ref bit for bit. Logits: double on
// every target, omp sums in another order (simd): 1e-12 relative. The weights and outputs: omp's
// summation order, the device's double exp (1 ulp), both far below float resolution.
struct AttendTol {
  Tol logit, w, o;
};
constexpr AttendTol kOmpTol{{1e-9, 1e-12}, {1e-7, 1e-5}, {1e-6, 1e-5}};
// The device's logits are ref's double operations in ref's order: exact.
constexpr AttendTol kCudaTol{test::kBitExact, {1e-9, 1e-6}, {1e-7, 1e-6}};

struct AttendCase {
  const char* name;
  int64_t G, n, D;
  Data data;
  uint64_t seed;
  int64_t n_views;  // > 1: slots alternate between views 0..n_views (sim/strategies/slot.h)
};

const AttendCase kAttendCases[] = {{"n1_seed1", 1, 1, 4, Data::random, 1, 1},
                                   {"n31_seed2", 4, 31, 8, Data::random, 2, 1},
                                   {"n33_seed3", 2, 33, 16, Data::random, 3, 1},
                                   {"n97_seed4", 3, 97, 12, Data::random, 4, 1},
                                   {"all_equal_n33_seed5", 2, 33, 8, Data::all_equal, 5, 1},
                                   {"huge_negative_n31_seed6", 2, 31, 8, Data::huge_negative, 6, 1},
                                   {"views3_n45_seed7", 2, 45, 8, Data::random, 7, 3},
                                   {"n300_D64_seed8", 4, 300, 64, Data::random, 8, 1}};

struct AttendOut {
  std::vector<double> logit;
  std::vector<float> w, o;
};

struct AttendInput {
  Layer L;
  std::vector<float> bias;
  std::vector<int32_t> view;
  explicit AttendInput(const AttendCase& c) : L(c.G, 1, c.n, c.D), bias(c.n), view(c.n, 0) {
    test::fill(L, c.data, c.seed);
    for (int64_t s = 0; s < c.n; ++s) bias[s] = (s % 3 == 0) ? std::log(float(1 + s % 5)) : 0.0f;
    if (c.n_views > 1)
      for (int64_t s = 0; s < c.n; ++s) view[s] = static_cast<int32_t>(s % (c.n_views + 1));
  }
  SlotsView slots(const AttendCase& c) const {
    return SlotsView{L.k.data(), L.v.data(), bias.data(), c.n_views > 1 ? view.data() : nullptr, c.n, c.n_views};
  }
};

AttendOut attend_with(AttendSlotsFn fn, const AttendCase& c, const AttendInput& in) {
  AttendOut out{std::vector<double>(c.G * c.n), std::vector<float>(c.G * c.n), std::vector<float>(c.G * c.D)};
  fn(in.L.q.data(), c.D, c.G, c.D, in.slots(c), out.logit.data(), out.w.data(), out.o.data());
  return out;
}

void check_attend(Target t) {
  const AttendSlotsFn fn = test::target_kernels(t).attend_slots;
  for (const auto& c : kAttendCases) {
    SUBCASE(c.name) {
      AttendInput in(c);
      const AttendOut r = attend_with(ref::attend_slots, c, in), g = attend_with(fn, c, in);
      const AttendTol tol = t == Target::cuda_host ? AttendTol{test::kBitExact, test::kBitExact, test::kBitExact}
                            : t == Target::omp     ? kOmpTol
                                                   : kCudaTol;
      test::check_close("logit", g.logit, r.logit, tol.logit);
      test::check_close("w", g.w, r.w, tol.w);
      test::check_close("o_hat", g.o, r.o, tol.o);
    }
  }
}

// Every strategy, its decode steps attending on the target: the same kept set as ref's after every
// step, exactly (the weights it observes differ by rounding at most).
void check_kept_sets(Target t) {
  const AttendSlotsFn fn = test::target_kernels(t).attend_slots;
  const char* specs[] = {"window:budget=9",
                         "streaming:budget=9,sinks=2",
                         "h2o:budget=9,recent=3",
                         "h2o:budget=9,recent=2,norm=mean,gqa=max",
                         "tova:budget=9",
                         "scissorhands:budget=9,recent=2,history=5",
                         "snapkv:budget=12,window=4",
                         "pyramidkv:budget=12,window=4",
                         "knorm:budget=9,recent=1",
                         "random:budget=9,seed=5",
                         "h2o:budget=200"};
  struct Case {
    const char* name;
    int64_t T, P;
    Data data;
  };
  const Case cases[] = {{"T31", 31, 13, Data::random},
                        {"T33_sink", 33, 20, Data::sink},
                        {"T97", 97, 40, Data::random},
                        {"all_equal_T33", 33, 14, Data::all_equal},
                        {"huge_negative_T31", 31, 16, Data::huge_negative}};
  for (const auto& c : cases)
    for (const char* spec : specs) {
      Layer L(4, 2, c.T, 8);
      test::fill(L, c.data, 1234);
      auto s = make_strategy(spec);
      auto r = test::kept_sets(*s, L, c.P, ref::attend_slots, 1, 3);
      auto o = test::kept_sets(*s, L, c.P, fn, 1, 3);
      REQUIRE(r.size() == o.size());
      for (size_t step = 0; step < r.size(); ++step)
        for (size_t kv = 0; kv < r[step].size(); ++kv) {
          if (r[step][kv] == o[step][kv]) continue;
          FAIL_CHECK(std::string(c.name) << " " << std::string(spec) << " step " << step << " kv " << kv << ": ref "
                                         << test::set_str(r[step][kv]) << " " << std::string(test::target_name(t))
                                         << " " << test::set_str(o[step][kv]));
          step = r.size();
          break;
        }
    }
}

}  // namespace

KVSIM_BACKEND_TEST_CASES("attend_slots vs ref on the harness cases", check_attend)
KVSIM_BACKEND_TEST_CASES("kept sets of every strategy equal ref's exactly", check_kept_sets)

namespace {

// All D = 8 cases in one batch (the replay's lockstep form, cuda/attend.h): each request's outputs
// against its own ref call. `run` is the emulation or the device launch.
void check_attend_batch(void (*run)(cuda::AttendBatch&), AttendTol tol) {
  std::vector<std::unique_ptr<AttendInput>> ins;
  std::vector<const AttendCase*> used;
  cuda::AttendBatch b;
  b.clear(8);
  for (const auto& c : kAttendCases)
    if (c.D == 8) {
      ins.push_back(std::make_unique<AttendInput>(c));
      used.push_back(&c);
      b.add(ins.back()->L.q.data(), c.D, c.G, ins.back()->slots(c));
    }
  REQUIRE(used.size() >= 3);
  run(b);
  for (size_t i = 0; i < used.size(); ++i) {
    const AttendCase& c = *used[i];
    const AttendOut r = attend_with(ref::attend_slots, c, *ins[i]);
    INFO("batch request " << i << " (" << std::string(c.name) << ")");
    const size_t nw = r.w.size(), no = r.o.size();
    test::check_close("logit", b.logit_of(int64_t(i)), r.logit.data(), nw, tol.logit);
    test::check_close("w", b.w_of(int64_t(i)), r.w.data(), nw, tol.w);
    test::check_close("o_hat", b.o_hat_of(int64_t(i)), r.o.data(), no, tol.o);
  }
}

}  // namespace

TEST_CASE("cuda-host: attend batch of every D = 8 case (host emulation) equals ref bit for bit per request") {
  check_attend_batch(test::emulate_attend_batch, {test::kBitExact, test::kBitExact, test::kBitExact});
}

TEST_CASE("cuda: attend batch of every D = 8 case on the device vs ref per request") {
  KVSIM_REQUIRE_CUDA_DEVICE();
  check_attend_batch(cuda::run_attend_batch, kCudaTol);
}

TEST_CASE("backends: cuda without a CUDA build or a device is refused with the reason, never a fallback") {
  std::string why;
  if (backend_available(Backend::cuda, &why)) KVSIM_SKIP("a CUDA device can run here: nothing to refuse");
  CHECK_THROWS_WITH_AS(require_backend(Backend::cuda), why.c_str(), NotCompiled);
  CHECK(why.rfind("backend cuda: ", 0) == 0);
}
