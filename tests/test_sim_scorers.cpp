// The scorers of issue 15 (keydiff, lagkv, expected_attention, simlayerkv), each rule on a case small
// enough to compute by hand: every expected kept set below is derived in the comments from the rule
// in sim/strategies/STRATEGIES.md, not from running the code. The last case checks composition with a
// codec by its properties (quantized keys, fewer bytes); tests/py/test_scorers_numpy.py checks every
// metric on the embedded trace against an independent NumPy replay.
#include <doctest/doctest.h>

#include <cmath>
#include <set>
#include <string>

#include "sim/base/error.h"
#include "sim/metrics.h"
#include "sim/strategies/strategy.h"
#include "tests/sim_test_util.h"

using namespace kvsim;
using kvsim::test::Driver;
using kvsim::test::Layer;
using S = std::set<int32_t>;

namespace {
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
                                 "simlayerkv:initial=4,recent=16,delta=0"})
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
