// rocketkv (sim/strategies/rocketkv.cpp) on layers small enough to follow by hand: the budgets, the
// slots stage 2 reads, the stage-1 cut, bytes and read_bytes, and the refusals.
#include <doctest/doctest.h>

#include <set>
#include <string>

#include "sim/base/error.h"
#include "sim/instance.h"
#include "tests/sim_test_util.h"

using namespace kvsim;
using test::Layer;

namespace {
std::string fits_error(const std::string& spec, int64_t D, int64_t T, int64_t P) {
  try {
    auto s = make_strategy(spec);
    check_fits(*s, ModelShape{1, 2, 1, D}, T, P, Protocol::sparse);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "no error";
}
}  // namespace

TEST_CASE("rocketkv: stage 2 reads whole chunks by their maxima over the top channels") {
  // T = 12, P = 4, B = 4: c = 3, r = 0.2 + 0.06 log2 3 = 0.2951, C = max(int(12 / 3^r) = 8,
  // min(2·8, 12) = 12) = 12, B_p = 4 = P (no cut), top-k = 2, c2 = 3, m = ceil(√3) = 2,
  // r_ch = int(3·2/3) = 2. D = 3, G = 2; both query heads q = (1, 0.05, 0.1): channels {0, 2}
  // (mean |q| 1, 0.1 > 0.05), sign +1 on all. Keys: channel 0 = 3, -2, 1, 0, -3, 2, ...,
  // channel 1 = 100 at position 3 (seen only by the exact logits), channel 2 = 0.
  Layer L(2, 1, 12, 3);
  const float kx[12] = {3, -2, 1, 0, -3, 2, 0, 0, 0, 0, 0, 0};
  for (int64_t t = 0; t < 12; ++t) {
    L.K(0, t, 0) = kx[t], L.V(0, t, 0) = float(t);
    for (int64_t h = 0; h < 2; ++h) L.Q(h, t, 0) = 1, L.Q(h, t, 1) = 0.05f, L.Q(h, t, 2) = 0.1f;
  }
  L.K(0, 3, 1) = 100;
  auto s = make_strategy("rocketkv:budget=4");
  LayerView lv = L.view();
  Instance inst(*s, make_context(*s, ModelShape{1, 2, 1, 3}, 0, 0, 12, 4, Protocol::sparse));
  inst.prefill_from(lv);
  CHECK(inst.cache(0).size() == 4);
  int steps = 0;
  for (int64_t t = 4; t < 6; ++t)
    inst.step(lv, t, kernels(Backend::ref).attend_slots, [&](const Instance& in, int64_t step) {
      ++steps;
      // Step 4: chunks {0,1} max 3, {2,3} max 1, {4} max -3: the top-2 slots are chunk {0,1}
      // (the low key at 1 comes with it, the key at 3 that the exact attention favours does not).
      // Step 5: chunk {4,5} has max 2, still below 3: the same two slots.
      for (int64_t g = 0; g < 2; ++g) CHECK(test::positions(in.attended(0, g)) == std::set<int32_t>{0, 1});
      // bytes: (t+1) slots at 4·D = 12 plus ceil((t+1)/2) chunks of min and max (2·D fp16 = 12);
      // read: 2 bytes per chunk per channel (2 channels) plus the 2 slots at 12.
      const double chunks = double((step + 2) / 2);
      CHECK(in.bytes(0) == 12.0 * double(step + 1) + 12.0 * chunks);
      CHECK(in.read_bytes(0) == 2.0 * 2.0 * chunks + 24.0);
    });
  CHECK(steps == 2);
}

TEST_CASE("rocketkv: stage 1 cuts the prompt once with SnapKV and keeps every decode token") {
  // T = 12, P = 8, B = 4: c = 3, C = max(8, min(2·4, 12)) = 8, B_p = 4 < P: SnapKV keeps
  // B_p - w = 2 prompt tokens plus the window w = 2 (positions 6, 7). Keys on channel 0: 5 at
  // position 2, 4 at position 4, 0 elsewhere; window queries (1, 0, 0): votes follow exp(k/√3).
  Layer L(2, 1, 12, 3);
  L.K(0, 2, 0) = 5, L.K(0, 4, 0) = 4;
  for (int64_t t = 0; t < 12; ++t)
    for (int64_t h = 0; h < 2; ++h) L.Q(h, t, 0) = 1;
  LayerView lv = L.view();
  for (const char* spec : {"rocketkv:budget=4,window=2,kernel=1", "rocketkv:budget=4,window=2"}) {
    auto s = make_strategy(spec);
    Instance inst(*s, make_context(*s, ModelShape{1, 2, 1, 3}, 0, 0, 12, 8, Protocol::sparse));
    inst.prefill_from(lv);
    // Kernel 1: the two largest votes, {2, 4}. Kernel 63 (the default) pools every candidate to
    // the same maximum: ties go to the lower positions, {0, 1}.
    const std::set<int32_t> heavy = std::string(spec).find("kernel=1") != std::string::npos
                                        ? std::set<int32_t>{2, 4, 6, 7}
                                        : std::set<int32_t>{0, 1, 6, 7};
    CHECK(test::positions(inst.cache(0)) == heavy);
    for (int64_t t = 8; t < 12; ++t)
      inst.step(lv, t, kernels(Backend::ref).attend_slots, [&](const Instance& in, int64_t step) {
        CHECK(in.cache(0).size() == 4 + step - 8 + 1);  // decode tokens are never evicted
        // c2 = C / B = 2, m = 2: bytes = slots·12 + ceil(slots / 2)·12.
        const double n = double(in.cache(0).size());
        CHECK(in.bytes(0) == 12.0 * n + 12.0 * double((in.cache(0).size() + 1) / 2));
      });
  }
}

TEST_CASE("rocketkv: composes with a codec and refuses impossible budgets in one line") {
  CHECK(fits_error("rocketkv:budget=4+quant:bits=8,group=3", 3, 12, 4) == "no error");
  CHECK(fits_error("rocketkv:budget=1", 3, 12, 4).find("budget = 1 must be >= 2") != std::string::npos);
  CHECK(fits_error("rocketkv:budget=4,kernel=4", 3, 12, 4).find("kernel = 4 must be odd") != std::string::npos);
  // T = 12, P = 8, B = 4 with the default window: B_p = 4 < w = min(32, 8) = 8.
  CHECK(fits_error("rocketkv:budget=4", 3, 12, 8).find("B_p = C - new = 4 is below the window w = 8") !=
        std::string::npos);
  // T = 512, P = 500, B = 2, D = 2: C = 24, c2 = 12, m = 4, r_ch = int(2·4/12) = 0.
  CHECK(fits_error("rocketkv:budget=2", 2, 512, 500).find("r_ch = int(D m / c2) = 0 channels") != std::string::npos);
}
