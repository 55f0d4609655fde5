// The scorers of issue 15 (keydiff, lagkv, expected_attention, simlayerkv), each rule on a case small
// enough to compute by hand: every expected kept set below is derived in the comments from the rule
// in sim/strategies/STRATEGIES.md, not from running the code. The last case checks composition with a
// codec by its properties (quantized keys, fewer bytes); tests/py/test_scorers_numpy.py checks every
// metric on the embedded trace against an independent NumPy replay.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <set>
#include <string>

#include "sim/base/error.h"
#include "sim/metrics.h"
#include "sim/strategies/head_scores.h"
#include "sim/strategies/strategy.h"
#include "tests/sim_test_util.h"
#include "tests/trace_helpers.h"

using namespace kvsim;
using kvsim::test::Driver;
using kvsim::test::Layer;
using S = std::set<int32_t>;

namespace {
// The one-line error of building `spec` and, with `profiles`, planning it (T = 64, P = 32).
std::string plan_error(const std::string& spec, const std::vector<std::vector<double>>* profiles = nullptr) {
  try {
    auto s = make_strategy(spec);
    if (profiles) s->make_plan(*profiles, 64, 32);
  } catch (const UsageError& e) {
    return std::string(e.what());
  }
  return std::string("no error");
}
void set_key(Layer& L, int64_t t, float x, float y) { L.K(0, t, 0) = x, L.K(0, t, 1) = y; }
void set_value(Layer& L, int64_t t, float x, float y) { L.V(0, t, 0) = x, L.V(0, t, 1) = y; }
}  // namespace

TEST_CASE("strategy keydiff: keys least like the mean normalised key, blocks of the prompt, rescored each step") {
  // D = 2. Keys (hand-picked): k0 = k1 = k2 = (1, 0), k3 = k4 = (0, 1), k5 = (-1, 0).
  Layer L(1, 1, 7, 2);
  for (int64_t t = 0; t < 3; ++t) set_key(L, t, 1, 0);
  set_key(L, 3, 0, 1), set_key(L, 4, 0, 1), set_key(L, 5, -1, 0), set_key(L, 6, 1, 0);
  {
    // P = 5, B = 2, one block (128 > P): anchor a = mean of the unit keys = (3/5, 2/5), |a| = 0.7211;
    // cos((1,0), a) = 0.832, cos((0,1), a) = 0.555, so scores -0.832 (0, 1, 2) and -0.555 (3, 4): keep {3, 4}.
    Driver d("keydiff:budget=2", L, 5);
    CHECK(d.pos() == S{3, 4});
    // Step 5 holds {3, 4, 5}: a = (-1/3, 2/3), |a| = 0.745; cos(k3) = cos(k4) = 0.894, cos(k5) = 0.447:
    // 5 scores highest (-0.447), 3 and 4 tie (-0.894) and the lower position stays: {3, 5}.
    d.step(5, {{}});
    CHECK(d.pos() == S{3, 5});
  }
  {
    // block=1 (BlockPress one token at a time): start from {0, 1}.
    // + token 2: all three keys (1, 0), scores tie at -1: keep {0, 1}.
    // + token 3: a = (2/3, 1/3), |a| = 0.745; cos(k0) = cos(k1) = 0.894, cos(k3) = 0.447: keep 3 and 0.
    // + token 4: candidates {0, 3, 4}, a = (1/3, 2/3); cos(k0) = 0.447, cos(k3) = cos(k4) = 0.894: keep 0 and 3.
    Driver d("keydiff:budget=2,block=1", L, 5);
    CHECK(d.pos() == S{0, 3});
  }
  {
    // sinks=1 protects token 0 in the one-block cut: the best unprotected is 3 (ties 3, 4 to the lower).
    Driver d("keydiff:budget=2,sinks=1", L, 5);
    CHECK(d.pos() == S{0, 3});
  }
  CHECK_THROWS_AS(make_strategy("keydiff:budget=8,block=0"), UsageError);
  CHECK_THROWS_AS(make_strategy("keydiff:budget=8,gqa=max"), UsageError);  // query-free: no gqa
}

TEST_CASE("strategy lagkv: each block scored against the next, ranked within the block, sinks and tail kept") {
  // sinks = 1, lag = 2, D = 2, P = 7: blocks [1, 2], [3, 4], [5, 6]; e = 1 + 3·2 = 7, so [5, 6] is the
  // tail (the last block, no remainder) and is kept with the sink 0; blocks [1, 2] and [3, 4] are scored.
  Layer L(1, 1, 9, 2);
  set_key(L, 0, 5, 5), set_key(L, 1, 0, 1), set_key(L, 2, 0.5f, 0.5f), set_key(L, 3, 0, 0), set_key(L, 4, 1, 1);
  set_key(L, 5, 0, 0), set_key(L, 6, 1, 1), set_key(L, 7, 3, 0), set_key(L, 8, 0, 3);
  set_value(L, 0, 1, 0), set_value(L, 1, 0.25f, 0.75f), set_value(L, 2, 0, 1.5f), set_value(L, 3, 0.5f, 0.5f);
  set_value(L, 4, 0, 1), set_value(L, 5, 0, 0), set_value(L, 6, 1, 1), set_value(L, 7, 2, 0), set_value(L, 8, 0, 2);
  // Block [1, 2], reference [3, 4]. Keys: min (0, 0), max (1, 1), x̃ = x; σ (unbiased std of 2 channels,
  // |a − b|/√2): k1 0.7071, k2 0; softmax 0.6698, 0.3302. Values: min (0, 0.5), max (0.5, 1), x̃ =
  // (x0/0.5, (x1 − 0.5)/0.5): v1 -> (0.5, 0.5), σ 0; v2 -> (0, 2), σ 1.4142; softmax 0.1956, 0.8044.
  // Mean: token 1 0.4327, token 2 0.5673: ranks 0 and 1/2 (the values outweigh the keys).
  // Block [3, 4], reference [5, 6]: min (0, 0), max (1, 1). Keys k3 = (0, 0), k4 = (1, 1): σ 0 both, 0.5
  // each. Values v3 = (0.5, 0.5) σ 0, v4 = (0, 1) σ 0.7071: softmax 0.3302, 0.6698. Mean 0.4151, 0.5849:
  // token 4 ranks 1/2, token 3 ranks 0. Scores: 0, 5, 6 -> 1; 2, 4 -> 1/2; 1, 3 -> 0.
  {
    Driver d("lagkv:budget=5,sinks=1,lag=2", L, 7);
    CHECK(d.pos() == S{0, 2, 4, 5, 6});
    // Step 7 (protocol evict) holds {0, 2, 4, 5, 6, 7}, in position order: sink 0, blocks [2, 4], [5, 6],
    // remainder 7 (e = 1 + 2·2 = 5: tail = [5, 6] + 7). Block [2, 4] against [5, 6] (min (0, 0), max
    // (1, 1)): keys k2 = (0.5, 0.5), k4 = (1, 1), σ 0 both: 0.5 each; values v2 = (0, 1.5) σ 1.0607,
    // v4 = (0, 1) σ 0.7071: softmax 0.5875, 0.4125. Token 2 ranks 1/2, token 4 ranks 0: 4 is evicted.
    d.step(7, {{}});
    CHECK(d.pos() == S{0, 2, 5, 6, 7});
  }
  {
    // B = 4: 0, 5, 6 (score 1) and one of 2, 4 (both 1/2): the lower position, 2.
    Driver d("lagkv:budget=4,sinks=1,lag=2", L, 7);
    CHECK(d.pos() == S{0, 2, 5, 6});
  }
  {
    // P = 4 < sinks + 2·lag = 5: StreamingLLM, the sink (1) and the newest ((i − 1)/3): keep {0, 2, 3}.
    Driver d("lagkv:budget=3,sinks=1,lag=2", L, 4);
    CHECK(d.pos() == S{0, 2, 3});
  }
  CHECK_THROWS_AS(make_strategy("lagkv:budget=4"), UsageError);  // default 4 sinks: the budget must exceed them
  CHECK_THROWS_AS(make_strategy("lagkv:budget=8,lag=0"), UsageError);
}

TEST_CASE("strategy expected_attention: Gaussian future queries, covariance term, value norms, sinks kept") {
  // H = Hkv = 1, D = 2, rope_style none (R̄ = I), sinks = 1, P = 4, B = 2: one of tokens 1, 2, 3 stays.
  // Pre-RoPE queries at positions [1, 4): (2, 0), (0, 0), (1, 0): μ = (1, 0), Σ = diag(2/3, 0).
  // z_i = μ·k_i/√2 + k_iᵀΣk_i/4 = k_x/√2 + k_x²/6: k1 = (1, 0) 0.8738, k2 = (−6, 0) −4.2426 + 6 =
  // 1.7574, k3 = (0, 3) 0. Softmax over 1..3: 0.2606, 0.6306, 0.1088 (without the covariance term, cov=0:
  // z = 0.7071, −4.2426, 0: 0.6666, 0.0047, 0.3287).
  Layer L(1, 1, 6, 2);
  L.q_pre.assign(L.q.size(), 0.0f);
  L.q_pre[1 * 2] = 2, L.q_pre[3 * 2] = 1;
  set_key(L, 0, 9, 9), set_key(L, 1, 1, 0), set_key(L, 2, -6, 0), set_key(L, 3, 0, 3);
  set_value(L, 0, 1, 0), set_value(L, 1, 1, 0), set_value(L, 2, 0.1f, 0), set_value(L, 3, 0, 4);
  // Scores (a + 0)·‖v‖: 0.2606·1, 0.6306·0.1 = 0.0631, 0.1088·4 = 0.4351: token 3 stays.
  CHECK(Driver("expected_attention:budget=2,sinks=1", L, 4).pos() == S{0, 3});
  // vnorm=0: scores are a alone: token 2 (0.6306).
  CHECK(Driver("expected_attention:budget=2,sinks=1,vnorm=0", L, 4).pos() == S{0, 2});
  // cov=0, vnorm=0: token 1 (0.6666).
  CHECK(Driver("expected_attention:budget=2,sinks=1,vnorm=0,cov=0", L, 4).pos() == S{0, 1});
  // eps=1, vnorm=0: (a + 1) keeps the order of a: token 2 again.
  CHECK(Driver("expected_attention:budget=2,sinks=1,vnorm=0,eps=1", L, 4).pos() == S{0, 2});
  // Without q_pre the strategy refuses with one line.
  Layer none(1, 1, 6, 2);
  try {
    Driver d("expected_attention:budget=2,sinks=1", none, 4);
    FAIL("no error without q_pre");
  } catch (const UsageError& e) {
    CHECK(std::string(e.what()).find("needs the pre-RoPE queries q_pre") != std::string::npos);
  }
  CHECK(make_strategy("expected_attention:budget=8")->needs_q_pre());
  CHECK(make_strategy("expected_attention:budget=8+kivi:bits=2")->needs_q_pre());
}

TEST_CASE("strategy simlayerkv: a lazy layer keeps the initial and recent tokens, decided on the heads' mean") {
  // H = 2 query heads on one KV head, D = 2, P = 8, initial = 1, recent = 2 (P > 1 + 2 + 1). Every key
  // is 0 but k3 = (20, 0). The last prompt query of head 0 is (0, 1): every logit 0, uniform 1/8, so
  // its mass on {0} ∪ {6, 7} is 3/8. Head 1's is (1, 0): logit 14.14 on token 3, which takes all but
  // ~5e-6 of the mass. The layer's mean over the heads: 3/16 = 0.1875 (+ ~1e-6).
  Layer L(2, 1, 10, 2);
  set_key(L, 3, 20, 0);
  L.Q(0, 7, 1) = 1, L.Q(1, 7, 0) = 1;
  {
    Driver d("simlayerkv:initial=1,recent=2,delta=0.18", L, 8);  // 0.1875 > 0.18: lazy
    CHECK(d.pos() == S{0, 7});                                   // the initial 1 + the newest recent − 1 = 1
    d.step(8, {{}});
    CHECK(d.pos() == S{0, 8});  // protocol evict: the lazy layer slides
  }
  {
    // 0.1875 < 0.19, and < 0.3 although head 0 alone (0.375) would be lazy: the mean over heads decides.
    for (const char* spec : {"simlayerkv:initial=1,recent=2,delta=0.19", "simlayerkv:initial=1,recent=2,delta=0.3"}) {
      Driver d(spec, L, 8);
      CHECK(d.pos() == S{0, 1, 2, 3, 4, 5, 6, 7});
      d.step(8, {{}});
      CHECK(d.pos().size() == 9);
    }
  }
  // P = 4 = initial + recent + 1: too short, nothing is compressed even with delta = 0.
  CHECK(Driver("simlayerkv:initial=1,recent=2,delta=0", L, 4).pos() == S{0, 1, 2, 3});
  CHECK_THROWS_AS(make_strategy("simlayerkv:delta=1.5"), UsageError);
  CHECK_THROWS_AS(make_strategy("simlayerkv:budget=8"), UsageError);  // no budget: the saving is an output
}

TEST_CASE("strategy cake: token scores mean + gamma·var of the window, pooled in the cache's order; layer budgets") {
  // H = Hkv = 1, D = 2, P = 7, window w = 2 (queries 5, 6). Keys: k0 = (0, −1), k1 = (1, 0), k2 = (0, 1),
  // the rest 0. q5 = (√2 ln 4, 0), q6 = (√2 ln 4, √2 ln 8): logits q·k/√2.
  //   q5 over 0..5: e^z = 1, 4, 1, 1, 1, 1 (sum 9): past 0..4 = (1, 4, 1, 1, 1)/9;
  //   q6 over 0..6: e^z = 1/8, 4, 8, 1, 1, 1, 1 (sum 129/8): past = (1, 32, 64, 8, 8)/129.
  // Per past token, the mean and the unbiased variance ((a − b)²/2) over the two window queries:
  //   mean 0.059432, 0.346253, 0.303618, 0.086563, 0.086563;
  //   var  0.0053416, 0.0192830, 0.0741175, 0.0012052, 0.0012052;
  //   mean + 200·var = 1.12774, 4.20286, 15.12711, 0.32760, 0.32760.
  // Pooled over 3 (zero padding, /3): gamma 0: 0.13523, 0.23643, 0.24548, 0.15891, 0.05771;
  //   gamma 200: 1.77687, 6.81924, 6.55252, 5.26077, 0.21840.
  // One layer: budget C, B = C − w past tokens (P > C + w), kept with the window 5, 6.
  Layer L(1, 1, 9, 2);
  set_key(L, 0, 0, -1), set_key(L, 1, 1, 0), set_key(L, 2, 0, 1);
  const float r2 = std::sqrt(2.0f);
  L.Q(0, 5, 0) = r2 * std::log(4.0f), L.Q(0, 6, 0) = r2 * std::log(4.0f), L.Q(0, 6, 1) = r2 * std::log(8.0f);
  CHECK(Driver("cake:budget=3,window=2,kernel=1", L, 7).pos() == S{2, 5, 6});          // gamma 200: var decides
  CHECK(Driver("cake:budget=3,window=2,kernel=1,gamma=0", L, 7).pos() == S{1, 5, 6});  // the mean alone
  CHECK(Driver("cake:budget=3,window=2,kernel=3,gamma=0", L, 7).pos() == S{2, 5, 6});  // pooled: 2 over 1
  CHECK(Driver("cake:budget=3,window=2,kernel=3", L, 7).pos() == S{1, 5, 6});          // gamma 200, pooled: 1 over 2
  {
    // B = 2, gamma 0, kernel 3: tokens 2 and 1, held in the reference cache's order [2, 1, 5, 6] (its
    // topk, best first).
    Driver d("cake:budget=4,window=2,kernel=3,gamma=0", L, 7);
    CHECK(d.pos() == S{1, 2, 5, 6});
    // Step 7 (protocol evict): [2, 1, 5, 6, 7] holds 5 > B + w = 4. The current attention on the past
    // [2, 1, 5] (all but the last w) is 0.5, 0, 0.1, pooled in that order: 0.5/3, 0.6/3, 0.1/3: keep 1
    // and 2, drop 5 (pooled in position order [1, 2, 5] it would be 0.5/3, 0.6/3, 0.6/3: keep 2 and 5).
    d.step(7, {{{2, 0.5f}, {1, 0.0f}, {5, 0.1f}, {6, 0.2f}, {7, 0.2f}}});
    CHECK(d.pos() == S{1, 2, 6, 7});
    // Step 8: [1, 2, 6, 7, 8], past [1, 2, 6] at 0.3, 0, 0.2: pooled 0.1, 0.5/3, 0.2/3: keep 2 and 1;
    // token 6, in the window a step ago, goes.
    d.step(8, {{{1, 0.3f}, {2, 0.0f}, {6, 0.2f}, {7, 0.1f}, {8, 0.2f}}});
    CHECK(d.pos() == S{1, 2, 7, 8});
  }
  // P = 6 <= C + w = 4 + 2: not compressed; decode then holds C − w + w = 4 slots.
  {
    Driver d("cake:budget=4,window=2", L, 6);
    CHECK(d.pos() == S{0, 1, 2, 3, 4, 5});
    d.step(6, {{{0, 0.1f}, {1, 0.3f}, {2, 0.2f}, {3, 0.0f}, {4, 0.3f}, {5, 0.1f}}});
    CHECK(d.pos().size() == 4);
  }
  // The layer's profile: E = −Σ a·log(a + 1e-10) and V = Σ var over the past columns of both queries.
  auto cake = make_strategy("cake:budget=4,window=2");
  const auto prof = cake->layer_profile(L.view(), 7);
  REQUIRE(prof.size() == 2);
  CHECK(prof[0] == doctest::Approx(2.4130482).epsilon(1e-6));
  CHECK(prof[1] == doctest::Approx(0.1011524).epsilon(1e-5));
  CHECK_THROWS_AS(make_strategy("cake:budget=8,window=1"), UsageError);  // the variance needs 2 queries
  CHECK_THROWS_AS(make_strategy("cake:budget=8,kernel=4"), UsageError);
  CHECK_THROWS_AS(make_strategy("cake:budget=8,tau1=0"), UsageError);
  CHECK_THROWS_AS(make_strategy("cake:budget=8,gamma=-1"), UsageError);
  CHECK_THROWS_AS(Driver("cake:budget=2,window=2", L, 7), UsageError);  // C must exceed the window
}

TEST_CASE("strategy cake: layer budgets p = E^(1/tau1)·V^(1/tau2), total (C − w)·L, capped at P − w") {
  // C = 10, w = 2, L = 2: total = 16. Profiles (E, V) = (1, 3) and (1, 1).
  auto plan = [](const std::string& spec, int64_t P) {
    return make_strategy(spec)->make_plan({{1.0, 3.0}, {1.0, 1.0}}, 64, P);
  };
  using Vd = std::vector<double>;
  // P = 20 (seq = P − w = 18): p = 3, 1: 16·3/4 = 12, 16·1/4 = 4.
  CHECK(plan("cake:budget=10,window=2", 20) == Vd{12, 4});
  // tau2 = 0.5: p = 9, 1: 14.4 -> 14, 1.6 -> 1; the missing 1 goes to the first layer under seq: 15, 1.
  CHECK(plan("cake:budget=10,window=2,tau2=0.5", 20) == Vd{15, 1});
  // P = 13 (seq = 11): 12 is capped at 11, its excess 1 spread over the layers under seq: 11, 5.
  CHECK(plan("cake:budget=10,window=2", 13) == Vd{11, 5});
  // P = 12 <= C + w: no compression, every layer C − w = 8.
  CHECK(plan("cake:budget=10,window=2", 12) == Vd{8, 8});
  // Equal profiles give C − w each: cake at budget C holds what a uniform budget C holds.
  CHECK(make_strategy("cake:budget=10,window=2")->make_plan({{2.0, 5.0}, {2.0, 5.0}}, 64, 20) == Vd{8, 8});
}

TEST_CASE("strategy cake: over three layers the caches hold (C − w)·L + w·L slots in all, each layer its own B_l") {
  // Random layers whose window attention differs: the plan is uneven, and under protocol prefill the
  // cut holds exactly the total of a uniform budget C, per KV head summed over the layers.
  const int64_t H = 4, Hkv = 2, T = 60, D = 8, P = 48, C = 16, nL = 3;
  auto s = make_strategy("cake:budget=16,window=4");
  std::vector<Layer> layers;
  std::vector<std::vector<double>> profiles;
  for (int64_t l = 0; l < nL; ++l) {
    layers.emplace_back(H, Hkv, T, D);
    layers.back().fill_random(700 + l, 0.6f + 1.2f * static_cast<float>(l));  // sharper attention deeper
    profiles.push_back(s->layer_profile(layers.back().view(), P));
  }
  const std::vector<double> plan = s->make_plan(profiles, T, P);
  REQUIRE(plan.size() == 3);
  CHECK(plan[0] + plan[1] + plan[2] == doctest::Approx(3.0 * (C - 4)));
  CHECK((plan[0] != plan[1] || plan[1] != plan[2]));
  {  // Through a codec the strategy plans as its base (it once fell back to one layer's plan and asserted).
    auto sc = make_strategy("cake:budget=16,window=4+kivi:bits=2");
    CHECK(sc->needs_model_plan());
    std::vector<std::vector<double>> pc;
    for (auto& layer : layers) pc.push_back(sc->layer_profile(layer.view(), P));
    CHECK(sc->make_plan(pc, T, P) == plan);
  }
  for (int64_t kv = 0; kv < Hkv; ++kv) {
    int64_t held = 0;
    for (int64_t l = 0; l < nL; ++l) {
      LayerView lv = layers[l].view();
      Instance inst(*s, make_context(*s, ModelShape{nL, H, Hkv, D}, l, kv, T, P, Protocol::prefill, &plan));
      inst.prefill_from(lv);
      CHECK(inst.cache(0).size() == static_cast<int64_t>(plan[l]) + 4);
      held += inst.cache(0).size();
    }
    CHECK(held == nL * C);
  }
}

TEST_CASE("strategy duoattention: streaming heads by the area under the cumulated attention of mean q, k") {
  // One layer, H = Hkv = 2, D = 2, interleaved RoPE (pair 0 turns by 1 rad per position), q_len = 2.
  // Every prompt position has k_pre = (1, 0) in both KV heads, q_pre = (1, 0) in head 0 and (0, 1) in
  // head 1, so q̄, k̄ are those. Q_1 = R_1 q̄, K_p = R_p k̄: z_p = cos(φ + 1 − p)/√2, φ = angle(q̄) − angle(k̄).
  //   head 0 (φ = 0):   z_0 = cos(1)/√2 = 0.382051, z_1 = 0.707107: a_0 = 0.419444; area mean(a_0, 1) = 0.709722;
  //   head 1 (φ = π/2): z_0 = −sin(1)/√2 = −0.595010, z_1 = 0: a_0 = 0.355486; area 0.677743.
  const int64_t P = 6;
  Layer L(2, 2, 8, 2);
  L.rope_style = RopeStyle::interleaved;
  L.q_pre.assign(L.q.size(), 0.0f), L.k_pre.assign(L.k.size(), 0.0f);
  for (int64_t t = 0; t < L.T; ++t) {
    L.q_pre[(0 * L.T + t) * 2] = 1, L.q_pre[(1 * L.T + t) * 2 + 1] = 1;
    L.k_pre[(0 * L.T + t) * 2] = 1, L.k_pre[(1 * L.T + t) * 2] = 1;
  }
  L.fill_random(3);  // q, k, v (post-RoPE) do not enter the scores
  auto duo = make_strategy("duoattention:q_len=2,sink=1,recent=2");
  const auto prof = duo->layer_profile(L.view(), P);
  REQUIRE(prof.size() == 2);
  CHECK(prof[0] == doctest::Approx(0.7097221).epsilon(1e-6));
  CHECK(prof[1] == doctest::Approx(0.6777431).epsilon(1e-6));
  // head_ratio 0.5 of 2 heads: head 1 (the lower area) streams: the first sink = 1 and the last recent = 2.
  const auto kept = test::kept_sets(*duo, L, P, Backend::ref);
  CHECK(kept[0][0] == S{0, 1, 2, 3, 4, 5});
  CHECK(kept[0][1] == S{0, 4, 5});
  CHECK(kept[1][1] == S{0, 5, 6});  // protocol evict: the streaming head slides
  CHECK(kept[2][0].size() == 8);    // the retrieval head keeps everything
  // head_ratio 1: both stream; 0: none.
  CHECK(test::kept_sets(*make_strategy("duoattention:q_len=2,sink=1,recent=2,head_ratio=1"), L, P,
                        Backend::ref)[0][0] == S{0, 4, 5});
  CHECK(test::kept_sets(*make_strategy("duoattention:q_len=2,sink=1,recent=2,head_ratio=0"), L, P, Backend::ref)[0][1]
            .size() == 6);
  // Every head streaming is StreamingLLM with sinks = sink and budget = sink + recent, step for step.
  Layer R(4, 2, 40, 8);
  R.fill_random(8);
  R.q_pre = R.q, R.k_pre = R.k;
  CHECK(test::kept_sets(*make_strategy("duoattention:sink=3,recent=9,head_ratio=1"), R, 24, Backend::ref) ==
        test::kept_sets(*make_strategy("streaming:budget=12,sinks=3"), R, 24, Backend::ref));
  // Without pre-RoPE tensors (and no scores file) the profile refuses in one line.
  Layer plain(2, 2, 8, 2);
  CHECK_THROWS_AS(duo->layer_profile(plain.view(), P), UsageError);
  CHECK(duo->needs_q_pre());
  CHECK(duo->needs_pre_rope());
}

TEST_CASE("strategy duoattention: scores from a file, clipped to [0, 1], the lowest round(head_ratio·L·Hkv) stream") {
  const test::TempDir tmp;
  const std::string dir = tmp.path.string();
  const auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir + "/" + name) << text;
    return dir + "/" + name;
  };
  const std::string f = write("s.tsv", "0.9\t0.1\n0.3 0.5\n");                  // L = 2 rows of Hkv = 2
  const std::vector<std::vector<double>> prof(2, std::vector<double>(2, 0.0));  // the shape only
  using Vd = std::vector<double>;
  auto plan = [&](const std::string& params) {
    return make_strategy("duoattention:scores=" + f + params)->make_plan(prof, 64, 32);
  };
  CHECK(plan("") == Vd{0, 1, 1, 0});                   // 0.5·4 = 2: 0.1 and 0.3 stream
  CHECK(plan(",head_ratio=0.25") == Vd{0, 1, 0, 0});   // 1
  CHECK(plan(",head_ratio=0.375") == Vd{0, 1, 1, 0});  // round(1.5) = 2 (half to even, as Python's round)
  CHECK(plan(",head_ratio=0.625") == Vd{0, 1, 1, 0});  // round(2.5) = 2
  CHECK(plan(",head_ratio=0.875") == Vd{1, 1, 1, 1});  // round(3.5) = 4
  // Clipping: 1.5 -> 1 and -2 -> 0, so -2 (l0 h1) and 0.2 (l1 h0) are the lowest two; ties to the lower index.
  const std::string g = write("c.tsv", "1.5 -2\n0.2 1\n");
  CHECK(make_strategy("duoattention:scores=" + g)->make_plan(prof, 64, 32) == Vd{0, 1, 1, 0});
  CHECK(make_strategy("duoattention:scores=" + g + ",head_ratio=0.75")->make_plan(prof, 64, 32) == Vd{1, 1, 1, 0});
  // A file needs no pre-RoPE tensors.
  CHECK_FALSE(make_strategy("duoattention:scores=" + f)->needs_q_pre());
  // Bad files: one line each, with the path and the numbers.
  CHECK(plan_error("duoattention:scores=" + dir + "/missing.tsv").find("cannot read the head scores file") !=
        std::string::npos);
  CHECK(plan_error("duoattention:scores=" + write("b.tsv", "0.1 x\n")).find("b.tsv:1: 'x' is not a number") !=
        std::string::npos);
  CHECK(plan_error("duoattention:scores=" + write("r.tsv", "0.1 0.2\n0.3\n")).find("r.tsv:2: 1 head scores where") !=
        std::string::npos);
  const std::vector<std::vector<double>> three(3, std::vector<double>(2, 0.0));
  CHECK(plan_error("duoattention:scores=" + f, &three)
            .find("holds 2 x 2 head scores, the model has 3 layers x 2 KV heads") != std::string::npos);
  CHECK(plan_error("duoattention:head_ratio=1.5").find("must be in [0, 1]") != std::string::npos);
}

TEST_CASE("strategy headkv: capacities round(ŝ·floor(C/beta)·L·H + C − floor(C/beta)), SnapKV inside each head") {
  const test::TempDir tmp;
  const auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(tmp.file(name)) << text;
    return tmp.file(name);
  };
  using Vd = std::vector<double>;
  // L = 2, H = Hkv = 2, C = 10, beta = 2: floor(C/beta) = 5, pool = 5·2·2 = 20, C − 5 = 5. Scores 1, 3, 0, 4
  // (sum 8): ŝ·20 + 5 = 7.5, 12.5, 5, 15 -> 8, 12, 5, 15 (half to even, as torch.round).
  const std::vector<std::vector<double>> shape2(2, Vd{2, 2});  // the profiles: H, Hkv
  const std::string tsv = write("h.tsv", "1 3\n0 4\n");
  CHECK(make_strategy("headkv:budget=10,beta=2,scores=" + tsv)->make_plan(shape2, 64, 32) == Vd{8, 12, 5, 15});
  // The reference's JSON: each head's list averaged (1, 3, 0, 4 again).
  const std::string js = write("h.json", R"({"0-0": [1, 1], "0-1": [3], "1-0": [0, 0, 0], "1-1": [2, 6]})");
  CHECK(make_strategy("headkv:budget=10,beta=2,scores=" + js)->make_plan(shape2, 64, 32) == Vd{8, 12, 5, 15});
  // GQA: one layer, H = 4 on Hkv = 2, scores 1..4: ŝ·20 + 5 = 7, 9, 11, 13 per query head; each KV head
  // the round of its group's mean: 8, 12.
  const std::string q4 = write("q.tsv", "1 2 3 4\n");
  const std::vector<std::vector<double>> shape1(1, Vd{4, 2});
  CHECK(make_strategy("headkv:budget=10,beta=2,scores=" + q4)->make_plan(shape1, 64, 32) == Vd{8, 12});
  // beta 1.01 (the default): floor(10/1.01) = 9, pool 36, C − 9 = 1: 0.1·36 + 1 = 4.6 -> 5, 8.2 -> 8, 11.8 -> 12, 15.4
  // -> 15: means 6.5 -> 6, 13.5 -> 14.
  CHECK(make_strategy("headkv:budget=10,scores=" + q4)->make_plan(shape1, 64, 32) == Vd{6, 14});
  // The cut: equal scores give every head capacity C, so headkv keeps what SnapKV keeps at C + window
  // (window 2, max-pool 7, the group's mean), and holds C + window slots.
  Layer L(4, 2, 40, 8);
  L.fill_random(21);
  const std::string eq = write("e.tsv", "1 1 1 1\n");
  const auto a = test::kept_sets(*make_strategy("headkv:budget=10,window=2,scores=" + eq), L, 30, Backend::ref);
  const auto b = test::kept_sets(*make_strategy("snapkv:budget=12,window=2,kernel=7,pool=max"), L, 30, Backend::ref);
  CHECK(a[0] == b[0]);
  CHECK(a[0][0].size() == 12);
  // Uneven scores (1, 2, 3, 4): the KV heads keep 6 + 2 and 14 + 2.
  const auto c = test::kept_sets(*make_strategy("headkv:budget=10,scores=" + q4 + ",window=2"), L, 30, Backend::ref);
  CHECK(c[0][0].size() == 8);
  CHECK(c[0][1].size() == 16);
  CHECK(c[1][1].size() == 16);  // under protocol evict (kept_sets) the window slides over the new tokens
  // headkv.BASE around snapkv with headkv's window scoring (window 2, max-pool 7, the group's mean) is headkv,
  // at the cut and at every later step.
  const auto w = test::kept_sets(*make_strategy("headkv.snapkv:budget=10,window=2,kernel=7,pool=max,scores=" + q4), L,
                                 30, Backend::ref);
  CHECK(w == c);
  // Around h2o without recent tokens (nothing forced): each KV head keeps its capacity, 6 and 14, of its best.
  const auto hz = test::kept_sets(*make_strategy("headkv.h2o:budget=10,recent=0,scores=" + q4), L, 30, Backend::ref);
  CHECK(hz[0][0].size() == 6);
  CHECK(hz[0][1].size() == 14);
  CHECK(plan_error("headkv.snapkv:budget=40").find("headkv needs scores=FILE") != std::string::npos);
  // Bad input: no scores, the wrong shape, beta < 1, scores summing to 0, bad JSON keys.
  CHECK(plan_error("headkv:budget=10").find("headkv needs scores=FILE") != std::string::npos);
  CHECK(plan_error("headkv:budget=10,scores=" + tsv, &shape1)
            .find("holds 2 x 2 head scores, the model has 1 layers x 4") != std::string::npos);
  CHECK(plan_error("headkv:budget=10,beta=0.5,scores=" + tsv).find("must be >= 1") != std::string::npos);
  CHECK(plan_error("headkv:budget=10,scores=" + write("z.tsv", "0 0\n0 0\n"), &shape2).find("sum to 0") !=
        std::string::npos);
  CHECK(
      plan_error("headkv:budget=10,scores=" + write("k.json", R"({"0x1": [1]})")).find("key '0x1' is not LAYER-HEAD") !=
      std::string::npos);
  CHECK(plan_error("headkv:budget=10,scores=" + write("m.json", R"({"0-0": [1], "1-1": [2]})"))
            .find("2 heads, not every LAYER-HEAD of 2 layers x 2 heads") != std::string::npos);
}

TEST_CASE("retrieval heads: a hit when the top-1 attention copies the predicted token from the needle") {
  // T = 8, P = 5, tokens 1 7 8 9 3 | 8 9 2, the needle [1, 4) = 7 8 9. Key j is the unit vector e_j (D = 8),
  // so a query 10·e_x puts the top-1 attention on position x. Decode steps t = 4, 5, 6 predict 8, 9, 2.
  //   head 0 looks at 2 (8: hit), 3 (9: hit), 1 (7 != 2: miss)          -> 2/3
  //   head 1 looks at 0 (outside), 3 (9: hit), 6 (outside the needle)   -> 1/3
  Layer L(2, 1, 8, 8);
  for (int64_t j = 0; j < 8; ++j) L.K(0, j, j) = 1.0f;
  const int64_t look[2][3] = {{2, 3, 1}, {0, 3, 6}};
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t s = 0; s < 3; ++s) L.Q(h, 4 + s, look[h][s]) = 10.0f;
  const std::vector<int32_t> tokens = {1, 7, 8, 9, 3, 8, 9, 2};
  const LayerView lv = L.view();
  std::vector<int32_t> gen;
  auto r = retrieval_scores(lv, tokens, 5, 1, 4, 50, {}, &gen);
  CHECK(r[0] == doctest::Approx(2.0 / 3));
  CHECK(r[1] == doctest::Approx(1.0 / 3));
  CHECK(gen == std::vector<int32_t>{8, 9, 2});
  // 2 of the needle's 3 tokens are generated.
  CHECK(needle_recall({7, 8, 9}, gen) == doctest::Approx(2.0 / 3));
  CHECK(needle_recall({8, 8}, {8}) == doctest::Approx(0.5));  // each generated token recalls one needle token
  // steps = 1: only t = 4; a stop id ends after the step that predicts it (9 at t = 5, counted).
  r = retrieval_scores(lv, tokens, 5, 1, 4, 1, {});
  CHECK(r[0] == doctest::Approx(1.0 / 3));
  CHECK(r[1] == 0.0);
  r = retrieval_scores(lv, tokens, 5, 1, 4, 50, {9}, &gen);
  CHECK(r[0] == doctest::Approx(2.0 / 3));
  CHECK(r[1] == doctest::Approx(1.0 / 3));
  CHECK(gen == std::vector<int32_t>{8, 9});
  // Equal logits: the top-1 is the lowest position (0, outside the needle).
  Layer Z(1, 1, 8, 8);
  const std::vector<int32_t> same = {7, 7, 7, 7, 7, 7, 7, 7};
  CHECK(retrieval_scores(Z.view(), same, 5, 1, 4, 50, {})[0] == 0.0);
}

TEST_CASE("strategy kvzip: the lowest reconstruction scores dropped across every layer and head, or per layer") {
  // L = 2, Hkv = 2, P = 6; the profiles are the layers' scores [Hkv, P], position 0 already 1 (sinks).
  // Flat index (l·Hkv + kv)·P + i.
  using Vd = std::vector<double>;
  const std::vector<Vd> profiles = {
      Vd{1, .5, .1, .3, .1, .2, /*kv 1*/ 1, .05, .6, .6, .2, .4},
      Vd{1, .3, .3, .7, .02, .1, /*kv 1*/ 1, .9, .8, .05, .3, .1},
  };
  const auto kept = [](const Vd& plan, int64_t l, int64_t kv) {
    S out;
    for (int32_t i = 0; i < 6; ++i)
      if (plan[(l * 2 + kv) * 6 + i] != 0) out.insert(i);
    return out;
  };
  // budget=3, global: drop L·Hkv·(P − B) = 12 of 24, lowest first, the later index first among equals:
  // .02 (16), .05 (21, 7), .1 (23, 17, 4, 2), .2 (10, 5), .3 (22, 14, 13); the next, .3 at 3, stays.
  const Vd g = make_strategy("kvzip:budget=3")->make_plan(profiles, 20, 6);
  CHECK(kept(g, 0, 0) == S{0, 1, 3});
  CHECK(kept(g, 0, 1) == S{0, 2, 3, 5});
  CHECK(kept(g, 1, 0) == S{0, 3});
  CHECK(kept(g, 1, 1) == S{0, 1, 2});  // 3 + 4 + 2 + 3 = 12 = L·Hkv·B: the memory of a uniform budget 3
  // layerwise=1: Hkv·(P − B) = 6 per layer. Layer 0: .05 (7), .1 (4, 2), .2 (10, 5), .3 (3); layer 1: .02
  // (16), .05 (21), .1 (23, 17), .3 (22, 14), leaving 13.
  const Vd lw = make_strategy("kvzip:budget=3,layerwise=1")->make_plan(profiles, 20, 6);
  CHECK(kept(lw, 0, 0) == S{0, 1});
  CHECK(kept(lw, 0, 1) == S{0, 2, 3, 5});
  CHECK(kept(lw, 1, 0) == S{0, 1, 3});
  CHECK(kept(lw, 1, 1) == S{0, 1, 2});
  // press_ratio=0.3: int(24 · 0.3) = 7 dropped (kvpress's count): 16, 21, 7, 23, 17, 4, 2.
  const Vd pr = make_strategy("kvzip:press_ratio=0.3")->make_plan(profiles, 20, 6);
  CHECK(kept(pr, 0, 0) == S{0, 1, 3, 5});
  CHECK(kept(pr, 0, 1) == S{0, 2, 3, 4, 5});
  CHECK(kept(pr, 1, 0) == S{0, 1, 2, 3});
  CHECK(kept(pr, 1, 1) == S{0, 1, 2, 4});
  // A budget of the whole prompt drops nothing.
  CHECK(make_strategy("kvzip:budget=6")->make_plan(profiles, 20, 6) == Vd(24, 1.0));

  // Through the trace's scores (LayerView::kvzip_score [Hkv, T]): sinks=2 sets the first two to 1, so
  // with raw scores 0 there they stay; sinks=0 lets them go first. One layer, Hkv = 2, P = 6, T = 8.
  Layer L(2, 2, 8, 4);
  L.fill_random(5);
  std::vector<float> kz = {0, 0, .5f, .4f, .3f, .2f, 0, 0, /*kv 1*/ 0, 0, .9f, .1f, .6f, .7f, 0, 0};
  LayerView lv = L.view();
  lv.kvzip_score = kz.data(), lv.kvzip_context = 6;
  const auto cut = [&](const std::string& spec, int64_t kv) {
    auto s = make_strategy(spec);
    const Vd plan = s->make_plan({s->layer_profile(lv, 6)}, 8, 6);
    Instance inst(*s, make_context(*s, ModelShape{1, 2, 2, 4}, 0, kv, 8, 6, Protocol::prefill, &plan));
    inst.prefill_from(lv);
    return std::make_pair(test::positions(inst.cache(0)), inst.bytes(0));
  };
  // sinks=2, budget=4: drop 2·2 = 4 of the 12: .1 (kv 1, 3), .2 (kv 0, 5), .3 (kv 0, 4), .4 (kv 0, 3).
  CHECK(cut("kvzip:budget=4,sinks=2", 0).first == S{0, 1, 2});
  CHECK(cut("kvzip:budget=4,sinks=2", 1).first == S{0, 1, 2, 4, 5});
  // sinks=0: the four zeros go (kv 1's 1, 0, then kv 0's 1, 0).
  CHECK(cut("kvzip:budget=4,sinks=0", 0).first == S{2, 3, 4, 5});
  CHECK(cut("kvzip:budget=4,sinks=0", 1).first == S{2, 3, 4, 5});
  // Bytes: fp16 K and V, 4·D = 16 per slot, and one 4-byte length per head when the layer's heads hold
  // different lengths (3 and 5 slots: 3·16 + 4), none when they are equal (4 and 4: 4·16).
  CHECK(cut("kvzip:budget=4,sinks=2", 0).second == 52.0);
  CHECK(cut("kvzip:budget=4,sinks=0", 0).second == 64.0);

  // Refused: protocol evict; a replay that cuts elsewhere than the scored context; no scores.
  auto s = make_strategy("kvzip:budget=4");
  CHECK_THROWS_WITH_AS(s->make_state(make_context(*s, ModelShape{1, 2, 2, 4}, 0, 0, 8, 6, Protocol::evict)),
                       doctest::Contains("run it with --protocol prefill"), UsageError);
  CHECK_THROWS_WITH_AS(s->layer_profile(lv, 5),
                       doctest::Contains("scores its context of 6 tokens, and this replay "
                                         "cuts at P = 5; replay with --prefill 6"),
                       UsageError);
  lv.kvzip_score = nullptr;
  CHECK_THROWS_WITH_AS(s->layer_profile(lv, 6), doctest::Contains("needs kvzip_score"), UsageError);
}

TEST_CASE("strategy defensivekv: defensive max, value norms across heads, a mass floor, the layer's best") {
  // H = Hkv = 2 (G = 1), D = 1, every key 0: each query attends uniformly, query 4 over 5 keys (1/5 each),
  // query 5 over 6 (1/6). P = 6, window 2: the past is 0..3; kernel 1 (no pooling): d_i = max(1/5, 1/6) = 1/5
  // everywhere (and so the mean floor changes nothing). window_bias = the mean over 2 heads x 2 rows of the mass
  // on the last 2 past columns = (2/5 + 2/6) / 2 = 11/30. vo_norm kv0 = 1 1 1 1, kv1 = 2 1 1 2: normalised
  // across the heads n = kv0 (1/3, 1/2, 1/2, 1/3), kv1 (2/3, 1/2, 1/2, 2/3), scores d·n = kv0 (1/15, 1/10, 1/10,
  // 1/15), kv1 (2/15, 1/10, 1/10, 2/15); the maximum 2/15 is what the window (and stage 1) score.
  Layer L(2, 2, 8, 1);
  L.vo_norm.assign(16, 1.0f);
  L.vo_norm[8 + 0] = 2.0f, L.vo_norm[8 + 3] = 2.0f;
  const auto cut = [&](const std::string& spec) { return test::kept_sets(*make_strategy(spec), L, 6, Backend::ref); };
  // mass 0.3: the threshold 0.3 − 11/30 < 0 is reached at index 0, so no stage-1 token. B = 3: the layer keeps
  // 6: the 4 window tokens (they win the tie at the maximum), then kv1's 0 and 3 (2/15).
  const auto a = cut("defensivekv:budget=3,window=2,kernel=1,mass=0.3");
  CHECK(a[0][0] == S{4, 5});
  CHECK(a[0][1] == S{0, 3, 4, 5});
  // Under protocol evict (kept_sets) the window and new tokens slide within each head's budget (2 and 4), the
  // chosen 0 and 3 stay: after step 6, {5, 6} and {0, 3, 5, 6}.
  CHECK(a[1][0] == S{5, 6});
  CHECK(a[1][1] == S{0, 3, 5, 6});
  // mass 0.9: the threshold 0.9 − 11/30 = 8/15; ā is uniform (1/4 each), its cumulative sum 1/4, 1/2, 3/4
  // reaches it at index 2: count 2, capped at B − w. B = 3: position 0 (ties: the lower) joins the window;
  // B = 4: 0 and 1. Each head then holds exactly its pinned tokens.
  const auto b = cut("defensivekv:budget=3,window=2,kernel=1,mass=0.9");
  CHECK(b[0][0] == S{0, 4, 5});
  CHECK(b[0][1] == S{0, 4, 5});
  const auto c = cut("defensivekv:budget=4,window=2,kernel=1,mass=0.9");
  CHECK(c[0][0] == S{0, 1, 4, 5});
  CHECK(c[0][1] == S{0, 1, 4, 5});
  // vnorm=0: every past score is 1/5, the maximum: the window first, then the lower position, the lower head.
  const auto d = cut("defensivekv:budget=3,window=2,kernel=1,mass=0.3,vnorm=0");
  CHECK(d[0][0] == S{0, 4, 5});
  CHECK(d[0][1] == S{0, 4, 5});
  CHECK(plan_error("defensivekv:budget=4,kernel=2").find("must be odd") != std::string::npos);
  CHECK(plan_error("defensivekv:budget=4,mass=1.5").find("must be in [0, 1]") != std::string::npos);
}

TEST_CASE("scorers compose with a codec: kivi stores the kept slots, bytes fall, keys are quantized") {
  Layer L(4, 2, 80, 8);
  L.fill_random(15);
  L.q_pre = L.q;  // rope_style none
  LayerView lv = L.view();
  ExactStats rs;
  compute_exact_stats(lv, Backend::ref, rs);
  lv.entropy = rs.entropy.data();
  const int bytes = static_cast<int>(Metric::bytes), kerr = static_cast<int>(Metric::k_rel_err);
  for (const std::string base : {"keydiff:budget=32", "lagkv:budget=32,lag=8", "expected_attention:budget=32",
                                 "simlayerkv:initial=4,recent=16,delta=0", "cake:budget=24,window=4"})
    for (Protocol p : {Protocol::evict, Protocol::prefill}) {
      INFO(base << " under " << std::string(protocol_name(p)));
      auto plain = make_strategy(base), coded = make_strategy(base + "+kivi:bits=2,group=8,residual=8");
      const ConfigResult a = test::replay_one_layer(lv, rs, *plain, p, 40);
      const ConfigResult b = test::replay_one_layer(lv, rs, *coded, p, 40);
      CHECK(a.summary[kerr].mean == 0.0);                    // exact keys
      CHECK(b.summary[kerr].mean > 0.01);                    // 2-bit keys
      CHECK(b.summary[bytes].mean < a.summary[bytes].mean);  // 2-bit payload (fp16 residual window, scales)
    }
}

TEST_CASE("strategy rkv: attention of the window's queries minus key redundancy, compacted at B + buffer") {
  // H = Hkv = 1, D = 2, P = 6, B = 4, window w = 2 (tokens 4, 5, whose queries score the past 0..3).
  // Keys k0 = (2, 0), k1 = (1, 0), k2 = (0, 1), k3 = (0, −1), k4 = (1, 0), k5 = (0, 1), k6 = (−1, 0).
  // Queries q4 = q5 = (0, 2√2), q6 = q7 = 0.
  Layer L(1, 1, 8, 2);
  set_key(L, 0, 2, 0), set_key(L, 1, 1, 0), set_key(L, 2, 0, 1), set_key(L, 3, 0, -1);
  set_key(L, 4, 1, 0), set_key(L, 5, 0, 1), set_key(L, 6, -1, 0), set_key(L, 7, 1, 1);
  const float c = 2.0f * std::sqrt(2.0f);
  L.Q(0, 4, 1) = c, L.Q(0, 5, 1) = c;
  // Attention: logits q·k/√2 over the past 0..3 are 0, 0, 2, −2 for both window queries; softmax
  // [1, 1, 7.38906, 0.13534] / 9.52440 = a = (0.10499, 0.10499, 0.77580, 0.01421).
  // Redundancy over all 6 unit keys: cos(0,1) = cos(0,4) = cos(1,4) = cos(2,5) = 1, cos(2,3) = cos(3,5) = −1,
  // the rest 0. Row i zeroes its last j with cos > 0.5: row 0 -> j = 4 (keeps C[0,1] = 1), row 1 -> 4
  // (keeps C[1,0]), row 2 -> 5 (keeps C[2,3] = −1), row 3 has none -> entry 0, already 0 (keeps C[3,2] =
  // C[3,5] = −1), row 4 -> 1 (keeps C[4,0]), row 5 -> 2 (keeps C[5,3] = −1). Column sums 2, 1, −1, −2, 0, −1,
  // means /6: 1/3, 1/6, −1/6, −1/3, 0, −1/6; softmax over the 6 (sum 5.98647): r = (0.23313, 0.19734,
  // 0.14140, 0.11969) on the past.
  {
    // λ = 0.1: 0.1·a − 0.9·r = −0.19932, −0.16711, −0.04968, −0.10630: keep 2, 3 and the window.
    Driver d("rkv:budget=4,window=2,kernel=1", L, 6);
    CHECK(d.pos() == S{2, 3, 4, 5});
  }
  // λ = 0.5: 0.5·(a − r) = −0.06407, −0.04617, 0.31720, −0.05274: keep 2, 1.
  CHECK(Driver("rkv:budget=4,window=2,kernel=1,lambda=0.5", L, 6).pos() == S{1, 2, 4, 5});
  // λ = 1 (attention only): 2, then 0 and 1 tie at 0.10499 and the lower position stays.
  CHECK(Driver("rkv:budget=4,window=2,kernel=1,lambda=1", L, 6).pos() == S{0, 2, 4, 5});
  // kernel = 3: pooled (0.10499, 0.77580, 0.77580, 0.77580) (the window is not pooled in): 1 and 2.
  CHECK(Driver("rkv:budget=4,window=2,kernel=3,lambda=1", L, 6).pos() == S{1, 2, 4, 5});
  // compress_prefill=0: the prompt stays whole until the cache reaches B + buffer.
  CHECK(Driver("rkv:budget=4,window=2,compress_prefill=0", L, 6).pos().size() == 6);

  // Decode, λ = 0.5, buffer = 1: the prefill cut leaves {1, 2, 4, 5} in the reference's cache order
  // [2, 1, 4, 5] (the kept past by descending score, then the window). Step 6 holds 5 = B + buffer:
  // compact. Window {5, 6}; past [2, 1, 4]: q5's logits 2, 0, 0 -> softmax 0.78699, 0.10651, 0.10651;
  // q6 uniform 1/3: a = (0.56016, 0.21992, 0.21992) for (2, 1, 4). Cosines over the 5 keys: (1,4) = (2,5) =
  // 1, (1,6) = (4,6) = −1. Rows 2, 1, 4, 5 zero their one match; row 6 has none and zeroes its entry 0,
  // in cache order:
  //  - order=slot (the reference): entry 0 is token 2 (already 0). Column means /5: token 2: 0, 1: −1/5,
  //    4: −1/5, 5: 0, 6: −2/5; softmax (sum 4.30778): r = 0.23214 (2), 0.19006 (1, 4). Scores 0.5·(a − r):
  //    2: 0.16401, 1 and 4 tie at 0.01493 -> the lower position: {1, 2, 5, 6}.
  //  - order=position: entry 0 is token 1, so C[6,1] = 0: means 0 (1), 0 (2), −1/5 (4), 0 (5), −2/5 (6);
  //    softmax (sum 4.48905): r = 0.22276 (1, 2), 0.18238 (4). Scores 1: −0.00142, 2: 0.16870,
  //    4: 0.01877: {2, 4, 5, 6}.
  {
    Driver d("rkv:budget=4,window=2,kernel=1,lambda=0.5,buffer=1", L, 6);
    d.step(6, {{}});
    CHECK(d.pos() == S{1, 2, 5, 6});
  }
  {
    Driver d("rkv:budget=4,window=2,kernel=1,lambda=0.5,buffer=1,order=position", L, 6);
    CHECK(d.pos() == S{1, 2, 4, 5});  // the same prefill cut (its order is position order then)
    d.step(6, {{}});
    CHECK(d.pos() == S{2, 4, 5, 6});
  }
  {
    // buffer = 2: step 6 holds 5 < 6 slots (no compaction), step 7 holds 6 = B + buffer, the peak that
    // attention sees, then compacts to B with the window {6, 7}. Bytes at attention (store, then
    // measure): 4·D = 8 per slot + the window's queries, fp16: 2·G·w·D = 2·1·2·2 = 8.
    Driver d("rkv:budget=4,window=2,kernel=1,lambda=0.5,buffer=2", L, 6);
    d.inst->store_from(d.lv, 6);
    CHECK(d.inst->bytes(0) == 5 * 8 + 8);
    d.inst->finish_step(6, std::vector<const float*>{nullptr});
    CHECK(d.pos() == S{1, 2, 4, 5, 6});
    d.inst->store_from(d.lv, 7);
    CHECK(d.inst->bytes(0) == 6 * 8 + 8);
    d.inst->finish_step(7, std::vector<const float*>{nullptr});
    CHECK(d.cache().size() == 4);
    CHECK(d.pos().count(6) == 1);
    CHECK(d.pos().count(7) == 1);
  }
  {
    // Protocol prefill: the same cut, then growth with no state (the queries are freed): 8 per slot.
    auto s = make_strategy("rkv:budget=4,window=2,kernel=1,lambda=0.5,buffer=2");
    LayerView lv = L.view();
    Instance inst(*s, make_context(*s, ModelShape{1, 1, 1, 2}, 0, 0, L.T, 6, Protocol::prefill));
    inst.prefill_from(lv);
    CHECK(test::positions(inst.cache(0)) == S{1, 2, 4, 5});
    for (int64_t t = 6; t < 8; ++t) {
      inst.store_from(lv, t);
      CHECK(inst.bytes(0) == (t - 1) * 8);  // 5, then 6 slots
      inst.finish_step(t, std::vector<const float*>{nullptr});
    }
    CHECK(test::positions(inst.cache(0)) == S{1, 2, 4, 5, 6, 7});
  }
}

TEST_CASE("strategy rkv: query heads pooled by the max logit before the softmax, bad parameters refused") {
  // G = 2 query heads on one KV head, D = 2, P = 5, B = 3, w = 2, λ = 1, kernel = 1: one past token of
  // 0..2 stays. Keys k0 = (1, 0), k1 = (0, 1), k2 = 0. Window queries (positions 3, 4), the same at both:
  // head 0 (3√2, 2√2) -> logits 3, 2, 0; head 1 (−5√2, 2√2) -> −5, 2, 0. Max over the heads first: 3, 2, 0,
  // softmax 0.70538, 0.25950, 0.03512: token 0 stays. (Softmax per head, then the mean over heads, would
  // give 0.35309, 0.56963, 0.07728 and keep token 1.)
  Layer L(2, 1, 6, 2);
  set_key(L, 0, 1, 0), set_key(L, 1, 0, 1), set_key(L, 3, 1, 1), set_key(L, 4, 1, -1);
  const float r2 = std::sqrt(2.0f);
  for (int64_t t : {3, 4}) {
    L.Q(0, t, 0) = 3 * r2, L.Q(0, t, 1) = 2 * r2;
    L.Q(1, t, 0) = -5 * r2, L.Q(1, t, 1) = 2 * r2;
  }
  {
    Driver d("rkv:budget=3,window=2,kernel=1,lambda=1,buffer=2", L, 5);
    CHECK(d.pos() == S{0, 3, 4});
    d.inst->store_from(d.lv, 5);
    CHECK(d.inst->bytes(0) == 4 * 8 + 2 * 2 * 2 * 2);  // 4 slots + the 2 heads' window queries, fp16
  }
  const auto msg = [](const std::string& spec) {
    try {
      Layer M(1, 1, 100, 2);
      Driver d(spec, M, 50);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(msg("rkv:budget=8,buffer=-1").find("buffer=-1 must be in [0,") != std::string::npos);
  CHECK(msg("rkv:budget=8").find("budget 8 must exceed window = 8") != std::string::npos);
  CHECK(msg("rkv:ratio=0.05").find("budget 5 must exceed window = 8") != std::string::npos);  // 0.05·100
  CHECK(msg("rkv:budget=16,lambda=1.5").find("lambda must be in [0, 1]") != std::string::npos);
  CHECK(msg("rkv:budget=16,lambda=-0.1").find("lambda must be in [0, 1]") != std::string::npos);
  CHECK(msg("rkv:budget=16,kernel=4").find("kernel must be odd") != std::string::npos);
  CHECK(msg("rkv:budget=16,threshold=2").find("threshold must be in [-1, 1]") != std::string::npos);
  CHECK(msg("rkv:budget=16,order=score").find("order=score is not one of slot, position") != std::string::npos);
  CHECK(msg("rkv:budget=16,window=0").find("window=0 must be in [1,") != std::string::npos);
  CHECK(msg("rkv:budget=16,sinks=4").find("unknown parameter 'sinks' for rkv") != std::string::npos);
  CHECK(msg("rkv:budget=16") == "no error");
  CHECK(make_strategy("rkv:budget=16")->needs_queries());
  CHECK(make_strategy("rkv:budget=16+kivi:bits=2")->needs_queries());
  CHECK_FALSE(make_strategy("snapkv:budget=64")->needs_queries());
}
