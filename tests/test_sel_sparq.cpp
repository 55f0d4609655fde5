// sparq (sim/strategies/sparq.cpp) on a layer small enough to work out by hand, which is also the
// test of the engine's Selection extensions (sim/strategies/strategy.h): a row of every slot with a
// per-entry logit correction (`bias`) and a loaded prefix (`loaded`), checked through the weights,
// the output and read_bytes the engine derives from them. Expected values are the paper's formulas
// evaluated in the test (α, softmax over i2, v̄), not kvsim's code.
#include <doctest/doctest.h>

#include <cmath>
#include <set>
#include <vector>

#include "sim/exact_stats.h"
#include "sim/instance.h"
#include "sim/replay.h"
#include "sim_test_util.h"

using namespace kvsim;
using kvsim::test::Layer;

namespace {

// D = 2, one KV head, G = 2, T = 4, P = 3: the one decode step t = 3 sees all four tokens.
//   keys    k0 = (2, 0), k1 = (0, 1), k2 = (-1, 0), k3 = (1, 1)
//   values  v0 = (1, 0), v1 = (0, 1), v2 = (-1, 0), v3 = (2, 2)      v̄ = (0.5, 0.75)
//   queries q0 = (2, 1), q1 = (0, 2)
// r = 1: Σ_g |q_g| = (2, 3), so i1 = {channel 1}, although head 0 alone would pick channel 0.
// τ_0 = √(2·1/3), a_0 = K[:,1]/τ_0 = (0, 1, 0, 1)/τ_0; τ_1 = √(2·2/2) = √2, a_1 = 2·K[:,1]/√2.
// Slots 1 and 3 lead both heads' ŝ, so with k = 2: i2 = {1, 3} (the exact top-2 of head 0 is {0, 3}).
// α_g = 2e^{c_g} / (2 + 2e^{c_g}) with c_0 = 1/τ_0 = √1.5 and c_1 = 2/√2 = √2.
Layer hand_layer() {
  Layer L(2, 1, 4, 2);
  const float k[4][2] = {{2, 0}, {0, 1}, {-1, 0}, {1, 1}}, v[4][2] = {{1, 0}, {0, 1}, {-1, 0}, {2, 2}};
  for (int64_t t = 0; t < 4; ++t) {
    L.K(0, t, 0) = k[t][0], L.K(0, t, 1) = k[t][1];
    L.V(0, t, 0) = v[t][0], L.V(0, t, 1) = v[t][1];
    L.Q(0, t, 0) = 2, L.Q(0, t, 1) = 1;
    L.Q(1, t, 0) = 0, L.Q(1, t, 1) = 2;
  }
  return L;
}

template <class F>
void one_step(const std::string& spec, Layer& L, F check) {
  auto s = make_strategy(spec);
  LayerView lv = L.view();
  Instance inst(*s, make_context(*s, ModelShape{1, L.H, L.Hkv, L.D}, 0, 0, L.T, L.T - 1, Protocol::sparse));
  inst.prefill_from(lv);
  int steps = 0;
  inst.step(lv, L.T - 1, kernels(Backend::ref).attend_slots, [&](const Instance& in, int64_t) {
    ++steps;
    check(in);
  });
  CHECK(steps == 1);
}

}  // namespace

TEST_CASE("sparq: the mixture with the mean value by hand (Selection bias and loaded through the engine)") {
  Layer L = hand_layer();
  const double c[2] = {std::sqrt(1.5), std::sqrt(2.0)};
  const float vbar[2] = {0.5f, 0.75f};
  one_step("sparq:k=2,r=1", L, [&](const Instance& in) {
    for (int g = 0; g < 2; ++g) {
      INFO("query head " << g);
      const SlotCache& row = in.attended(0, g);
      // The row is every slot, i2 first in slot order, then the rest: positions 1, 3, 0, 2.
      REQUIRE(row.size() == 4);
      CHECK(row.pos(0) == 1);
      CHECK(row.pos(1) == 3);
      CHECK(row.pos(2) == 0);
      CHECK(row.pos(3) == 2);
      const double alpha = std::exp(c[g]) / (1 + std::exp(c[g]));
      // Exact logits z = q·k/√2 of slots 1 and 3, softmax over i2.
      const double z1 = (g == 0 ? 1.0 : 2.0) / std::sqrt(2.0), z3 = (g == 0 ? 3.0 : 2.0) / std::sqrt(2.0);
      const double p1 = 1 / (1 + std::exp(z3 - z1)), p3 = 1 - p1;
      const double rest = (1 - alpha) / 4;
      const float* w = in.weights(0, g);
      CHECK(w[0] == doctest::Approx(alpha * p1 + rest).epsilon(1e-6));
      CHECK(w[1] == doctest::Approx(alpha * p3 + rest).epsilon(1e-6));
      CHECK(w[2] == doctest::Approx(rest).epsilon(1e-6));
      CHECK(w[3] == doctest::Approx(rest).epsilon(1e-6));
      // ô = α·y + (1 − α)·v̄ with y = p1·v1 + p3·v3.
      const double y[2] = {p1 * 0 + p3 * 2, p1 * 1 + p3 * 2};
      for (int x = 0; x < 2; ++x)
        CHECK(in.o_hat(0)[g * 2 + x] == doctest::Approx(alpha * y[x] + (1 - alpha) * vbar[x]).epsilon(1e-6));
    }
    // Held: fp16 K and V (4·D = 8 per token, 4 tokens) + v̄ in fp32 (4·D = 8).
    CHECK(in.bytes(0) == 8.0 * 4 + 8.0);
    // Read: channel i1 of every key (fp16: 2·r·n = 8) + v̄ (8) + the loaded i2 only (2 slots · 8),
    // although all four slots are in each row.
    CHECK(in.read_bytes(0) == 8.0 + 8.0 + 8.0 * 2);
  });
}

TEST_CASE("sparq: vmean=0 is plain top-k attention over i2, kcopy=1 holds the channel-major copy of K") {
  Layer L = hand_layer();
  one_step("sparq:k=2,r=1,vmean=0,kcopy=1", L, [&](const Instance& in) {
    CHECK(test::positions(in.attended(0, 0)) == std::set<int32_t>{1, 3});
    const double z1 = 1 / std::sqrt(2.0), z3 = 3 / std::sqrt(2.0);
    CHECK(in.weights(0, 0)[0] == doctest::Approx(1 / (1 + std::exp(z3 - z1))).epsilon(1e-6));
    CHECK(in.bytes(0) == 8.0 * 4 + 2.0 * 4 * 2);       // K, V + fp16 copy of K (2·n·D), no v̄
    CHECK(in.read_bytes(0) == 2.0 * 1 * 4 + 8.0 * 2);  // i1 channels + the two slots
  });
  // r = D: i1 is every channel and τ = √D, so ŝ_g is exact attention: the softmaxes of (4, 1, −2, 3)/√2
  // and (0, 2, 0, 2)/√2 sum to Σ_g ŝ_g = (0.712, 0.476, 0.107, 0.705), so i2 = {0, 3} for both heads.
  one_step("sparq:k=2,r=2,vmean=0", L, [&](const Instance& in) {
    CHECK(test::positions(in.attended(0, 0)) == std::set<int32_t>{0, 3});
    CHECK(test::positions(in.attended(0, 1)) == std::set<int32_t>{0, 3});
  });
}

TEST_CASE("sparq: when the rest's share underflows its weight is exactly 0, never NaN") {
  // Head 0 q = (1, 0), i1 = {0}, τ = √2: a = (2000, 0, 0, 0)/√2, so 1 − α = 3e^{-1414}/(...): below
  // double range, yet log(1 − α) is finite (a log-sum-exp over the rest). The weights are (1, 0, 0, 0).
  Layer L(1, 1, 4, 2);
  L.K(0, 0, 0) = 2000;
  for (int64_t t = 0; t < 4; ++t) L.Q(0, t, 0) = 1, L.V(0, t, 0) = float(t + 1);
  one_step("sparq:k=1,r=1", L, [&](const Instance& in) {
    REQUIRE(in.attended(0, 0).size() == 4);
    CHECK(in.attended(0, 0).pos(0) == 0);
    const float* w = in.weights(0, 0);
    CHECK(w[0] == 1.0f);
    for (int i = 1; i < 4; ++i) CHECK(w[i] == 0.0f);
    CHECK(in.o_hat(0)[0] == 1.0f);
    CHECK(std::isfinite(in.o_hat(0)[1]));
  });
}

TEST_CASE("sparq: k >= t + 1 reads everything and equals full exactly, on every metric") {
  Layer L(4, 2, 37, 8);
  L.fill_random(19, 1.5f);
  LayerView lv = L.view();
  ExactStats rs;
  compute_exact_stats(lv, Backend::ref, rs);
  lv.entropy = rs.entropy.data();
  auto full = make_strategy("full"), sparq = make_strategy("sparq:k=37,r=2");
  auto replay = [&](const Strategy& s, Protocol p) { return test::replay_one_layer(lv, rs, s, p, 5); };
  const ConfigResult a = replay(*full, Protocol::evict), b = replay(*sparq, Protocol::sparse);
  for (int m = 0; m < kNumMetrics; ++m) {
    if (m == int(Metric::bytes) || m == int(Metric::ratio) || m == int(Metric::read_bytes) ||
        m == int(Metric::read_ratio))
      continue;  // v̄ and the i1 channels on top
    INFO(metric_name(m));
    CHECK(a.summary[m].mean == b.summary[m].mean);
    CHECK(a.summary[m].worst == b.summary[m].worst);
  }
}

TEST_CASE("sparq: composes with a codec, scoring the keys as held") {
  Layer L(2, 1, 100, 8);
  L.fill_random(29);
  auto s = make_strategy("sparq:k=16,r=2+kivi:bits=2");
  LayerView lv = L.view();
  const int64_t P = 30, D = 8;
  Instance inst(*s, make_context(*s, ModelShape{1, 2, 1, D}, 0, 0, L.T, P, Protocol::sparse));
  inst.prefill_from(lv);
  for (int64_t t = P; t < L.T; ++t)
    inst.step(lv, t, kernels(Backend::ref).attend_slots, [&](const Instance& in, int64_t step) {
      const int64_t n = step + 1;
      const double meta = 2.0 * 2 * n + 4.0 * D, held = in.bytes(0) - 4.0 * D;
      CHECK(in.read_bytes(0) == doctest::Approx(held * 16.0 / double(n) + meta).epsilon(1e-12));
      double sum = 0;
      for (int64_t i = 0; i < n; ++i) sum += in.weights(0, 1)[i];
      CHECK(sum == doctest::Approx(1.0).epsilon(1e-5));
    });
  CHECK(inst.bytes(0) < 4.0 * D * L.T);  // quantized K and V
}

TEST_CASE("sparq: bad parameters are one-line errors") {
  auto msg = [](const std::string& spec) {
    try {
      auto s = make_strategy(spec);
      check_fits(*s, ModelShape{5, 8, 4, 8}, 512, 40, Protocol::sparse);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(msg("sparq:k=16") == "no error");
  CHECK(make_strategy("sparq:k=16")->params().at("r") == "D/8");
  CHECK(msg("sparq:budget=16,r=4") == "no error");
  CHECK(msg("sparq:ratio=0.1,r=4") == "no error");
  CHECK(msg("sparq:r=4").find("exactly one of k=TOKENS") != std::string::npos);
  CHECK(msg("sparq:k=4,budget=4").find("exactly one of k=TOKENS") != std::string::npos);
  CHECK(msg("sparq:k=0").find("k=0 must be > 0") != std::string::npos);
  CHECK(msg("sparq:k=4,r=0").find("r=0 must be >= 1") != std::string::npos);
  CHECK(msg("sparq:k=4,r=9").find("r=9 channels exceed the head dim D = 8") != std::string::npos);
  CHECK(msg("sparq:k=4,vmean=2").find("vmean=2 must be in [0, 1]") != std::string::npos);
  CHECK(msg("sparq:k=4,kcopy=3").find("kcopy=3 must be in [0, 1]") != std::string::npos);
}
