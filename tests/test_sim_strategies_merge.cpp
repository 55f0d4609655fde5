// Rules of the merging and sketch strategies (entropy_merge, kvmerger, cam, cms_topk), step by
// step on cases small enough to check by hand; expected sets and values are derived in comments.
#include <doctest/doctest.h>

#include <cmath>

#include "sim/strategies/strategy.h"
#include "tests/sim_test_util.h"

using namespace kvsim;
using kvsim::test::Driver;
using kvsim::test::Layer;
using S = std::set<int32_t>;

TEST_CASE("strategy entropy_merge: runs of high-entropy tokens merge, then the lowest-attention slot goes") {
  // T = P = 8, D = 2. Normalized entropies h = (0, .9, .9, .1, .9, .9, .9, .9): entropy_i = h_i log(i+1).
  Layer L(1, 1, 8, 2);
  const float h[8] = {0, .9f, .9f, .1f, .9f, .9f, .9f, .9f};
  L.entropy.resize(8);
  for (int i = 0; i < 8; ++i) L.entropy[i] = h[i] * static_cast<float>(std::log(i + 1.0));
  for (int i = 0; i < 8; ++i) L.K(0, i, 0) = static_cast<float>(i), L.V(0, i, 1) = static_cast<float>(i);
  L.colsums = {1, .5f, .5f, .2f, .3f, .3f, 1, 1};
  // Prefill at t = 7 with sinks 1, recent 2: mergeable 1..5 with h >= 0.5 -> runs {1,2}, {4,5}
  // (3 splits them). Slots 0, {1,2}, 3, {4,5}, 6, 7 = 6 > budget 5: scores {1,2} = 1.0, 3 = 0.2,
  // {4,5} = 0.6 -> 3 is evicted.
  Driver d("entropy_merge:budget=5,sinks=1,recent=2,threshold=0.5", L, 8);
  CHECK(d.pos() == S{0, 1, 4, 6, 7});
  const SlotCache& c = d.cache(0);
  const int64_t a = c.find(1);
  CHECK(c.n_members(a) == 2);
  CHECK(c.key(a)[0] == 1.5f);  // mean of keys 1 and 2
  CHECK(c.bias(a) == doctest::Approx(std::log(2.0)));
  CHECK(c.n_members(c.find(4)) == 2);
  // A higher threshold (0.95) makes nothing mergeable: plain eviction of the two lowest: 3 (0.2),
  // then 4 and 5 tie at 0.3 -> the higher position (5) goes first... budget 5 of 8 needs 3 evictions:
  // 3 (0.2), 5 (0.3, higher position of the tie), 4 (0.3).
  Driver e("entropy_merge:budget=5,sinks=1,recent=2,threshold=0.95", L, 8);
  CHECK(e.pos() == S{0, 1, 2, 6, 7});
  CHECK(e.cache(0).size() == 5);
}

TEST_CASE("strategy entropy_merge budget=none: threshold only, nothing evicted") {
  // The layer above: the merge pass gives slots 0, {1,2}, 3, {4,5}, 6, 7 and, with no budget, keeps
  // all six (the budgeted form evicted 3). Bytes: 6 fp16 slots of D = 2 (8 bytes each) = 48, plus 8
  // per merged slot (weight, member count) = 16; uniform weights hold no scores: 64.
  Layer L(1, 1, 8, 2);
  const float h[8] = {0, .9f, .9f, .1f, .9f, .9f, .9f, .9f};
  L.entropy.resize(8);
  for (int i = 0; i < 8; ++i) L.entropy[i] = h[i] * static_cast<float>(std::log(i + 1.0));
  for (int i = 0; i < 8; ++i) L.K(0, i, 0) = static_cast<float>(i), L.V(0, i, 1) = static_cast<float>(i);
  L.colsums = {1, .5f, .5f, .2f, .3f, .3f, 1, 1};
  Driver d("entropy_merge:budget=none,sinks=1,recent=2,threshold=0.5", L, 8);
  CHECK(d.pos() == S{0, 1, 3, 4, 6, 7});
  CHECK(d.cache(0).n_members(d.cache(0).find(4)) == 2);
  CHECK(d.inst->bytes(0) == 64);
  // weights=attention keeps the scores of the 6 slots held and the next token: + 4 x 7 = 92.
  CHECK(Driver("entropy_merge:budget=none,sinks=1,recent=2,weights=attention", L, 8).inst->bytes(0) == 92);
  CHECK(make_strategy("entropy_merge:budget=none")->params().at("budget") == "none");
  CHECK_THROWS_AS(make_strategy("entropy_merge:budget=none,ratio=0.5"), UsageError);
  CHECK_THROWS_AS(make_strategy("entropy_merge:threshold=0.5"), UsageError);  // budget=SLOTS|none required
  CHECK_THROWS_AS(make_strategy("h2o:budget=none"), UsageError);
}

TEST_CASE("strategy entropy_merge weights=attention: a merged slot weighs its parts' weights when they merged") {
  // T = 6, P = 4, D = 2, sinks 1, recent 1; h = (0, .9, .9, .9, .1, .1); keys k_i = (i, 0); colsums
  // (1, .2, .6, .4). Prefill (t = 3): mergeable 1, 2 -> M = {1, 2}, key (.2 x 1 + .6 x 2)/.8 = 1.75,
  // weight W_M = .8, score .8. Step 4 observes attention .5 on M and .1 on token 3: score_M = 1.3,
  // s_3 = .5. Token 3 is now mergeable and joins M: key = (W_M k_M + s_3 k_3)/(W_M + s_3) =
  // (.8 x 1.75 + .5 x 3)/1.3 = 2.2308 (weighing M by its current score 1.3 would give 2.0972).
  Layer L(1, 1, 6, 2);
  const float h[6] = {0, .9f, .9f, .9f, .1f, .1f};
  L.entropy.resize(6);
  for (int i = 0; i < 6; ++i) L.entropy[i] = h[i] * static_cast<float>(std::log(i + 1.0));
  for (int i = 0; i < 6; ++i) L.K(0, i, 0) = static_cast<float>(i);
  L.colsums = {1, .2f, .6f, .4f};
  Driver d("entropy_merge:budget=none,sinks=1,recent=1,weights=attention", L, 4);
  const int64_t m = d.cache(0).find(1);
  CHECK(d.cache(0).n_members(m) == 2);
  CHECK(d.cache(0).key(m)[0] == doctest::Approx(1.75));
  d.step(4, {{{1, .5f}, {3, .1f}}});
  const int64_t m2 = d.cache(0).find(1);
  CHECK(d.cache(0).n_members(m2) == 3);
  CHECK(d.cache(0).key(m2)[0] == doctest::Approx(2.9 / 1.3));
  CHECK(d.cache(0).bias(m2) == doctest::Approx(std::log(3.0)));
  CHECK(d.pos() == S{0, 1, 4});
}

TEST_CASE("strategy kvmerger: adjacent similar keys cluster around the highest-attention pivot") {
  // D = 4. Keys: k1 = (1,0,0,0), k2 = (1,.1,0,0) (cos 0.995), k3 = (0,1,0,0) (cos(k2,k3) 0.0995),
  // k4 = (0,1,.1,0) (cos 0.995); k0, k5 = (0,0,0,1). Sinks 1, recent 1, budget 3, threshold 0.9.
  Layer L(1, 1, 6, 4);
  L.K(0, 0, 3) = 1, L.K(0, 1, 0) = 1, L.K(0, 2, 0) = 1, L.K(0, 2, 1) = .1f;
  L.K(0, 3, 1) = 1, L.K(0, 4, 1) = 1, L.K(0, 4, 2) = .1f, L.K(0, 5, 3) = 1;
  L.colsums = {1, .2f, .8f, .5f, .1f, 1};
  // t = 5: clusters {1,2} (pivot 2, score .8) and {3,4} (pivot 3). Auto sigma: 2 sigma^2 = 2 * 0.01,
  // so the non-pivot weighs exp(-0.01 / 0.02) = exp(-0.5) = 0.60653. Merged {1,2}: key =
  // ((0.60653 * 1 + 1) / 1.60653, 0.1 / 1.60653) = (1, 0.062246); score 1.0. {3,4}: score 0.6.
  // Slots 0, {1,2}, {3,4}, 5 = 4 > 3: the lowest unprotected ({3,4}, 0.6) is evicted.
  Driver d("kvmerger:budget=3,sinks=1,recent=1,threshold=0.9", L, 6);
  CHECK(d.pos() == S{0, 1, 5});
  const SlotCache& c = d.cache(0);
  const int64_t m = c.find(1);
  CHECK(c.n_members(m) == 2);
  CHECK(c.key(m)[0] == doctest::Approx(1.0));
  CHECK(c.key(m)[1] == doctest::Approx(0.1 / (1 + std::exp(-0.5))));
  CHECK(c.bias(m) == 0.0f);  // prop=0 by default
}

TEST_CASE("strategy cam: the victim's value goes to the next kept tokens with p = clamp(A_e / mean A)") {
  Layer L(1, 1, 5, 4);
  for (int t = 0; t < 5; ++t) L.V(0, t, t % 4) = 1;  // v_t = e_(t mod 4)
  {
    // Scores (3, 1, 1, .5): victim among 0..2 (3 is recent) = lowest, tie 1 vs 2 -> the higher
    // position, 2. Kept tokens after 2: only 3 (m = 2 but one receiver): A_e / mean A = 1 / 0.5 -> p = 1:
    // v_3 += v_2 / 1 = (0,0,1,1).
    L.colsums = {3, 1, 1, .5f};
    Driver d("cam:budget=3,recent=1,m=2", L, 4);
    CHECK(d.pos() == S{0, 1, 3});
    const SlotCache& c = d.cache(0);
    const float* v3 = c.value(c.find(3));
    CHECK(v3[2] == 1.0f);
    CHECK(v3[3] == 1.0f);
    CHECK_FALSE(c.exact(c.find(3)));
    CHECK(c.exact(c.find(1)));
  }
  {
    // Scores (3, 0, 1, 1): victim 1 with A_e = 0 -> p = 0: no value moves.
    L.colsums = {3, 0, 1, 1};
    Driver d("cam:budget=3,recent=1,m=2", L, 4);
    CHECK(d.pos() == S{0, 2, 3});
    const SlotCache& c = d.cache(0);
    CHECK(c.exact(c.find(2)));
    CHECK(c.exact(c.find(3)));
  }
}

TEST_CASE("strategy cms_topk: a collision-free sketch is h2o and a one-bucket sketch ties everything") {
  Layer L(1, 1, 6, 4);
  L.colsums = {0.5f, 2.4f, 1.5f, 0.5f};
  {
    // As the h2o case: prefill evicts 0 (0.5); t = 4 with attention 3: .9, 4: .1 evicts 3 (1.4).
    Driver d("cms_topk:budget=3,recent=1,width=4096,depth=4", L, 4);
    CHECK(d.pos() == S{1, 2, 3});
    d.step(4, {{{3, 0.9f}, {4, 0.1f}}});
    CHECK(d.pos() == S{1, 2, 4});
  }
  {
    // width 1: every estimate is the running total, all scores tie, the higher positions go first.
    Driver d("cms_topk:budget=3,recent=1,width=1,depth=1", L, 4);
    CHECK(d.pos() == S{0, 1, 3});
  }
}

#include "sim/kernels/attend_views.h"
#include "sim/replay.h"
#include "tests/trace_helpers.h"
#include "traces/reader.h"
#include "traces/synth.h"

TEST_CASE("views: each view normalizes its own slots, weights are averaged (by hand)") {
  // z = (0, 0, ln 2), views (0, 1, 2), 2 views. View 1 sees slots 0, 1: (1/2, 1/2). View 2 sees 0, 2:
  // (1/3, 2/3). Averages: slot 0 = (1/2 + 1/3)/2 = 5/12, slot 1 = 1/4, slot 2 = 1/3.
  const double z[3] = {0, 0, std::log(2.0)};
  const int32_t view[3] = {0, 1, 2};
  double p[3];
  view_softmax(z, view, 2, 3, p);
  CHECK(p[0] == doctest::Approx(5.0 / 12));
  CHECK(p[1] == doctest::Approx(0.25));
  CHECK(p[2] == doctest::Approx(1.0 / 3));
}

TEST_CASE("strategy cms_aggregate: evicted tokens fold into their bucket and every token stays a member") {
  // P = 4, keys (i, 0), values (0, i); scores (.1, .2, .3, .4); budget 2, recent 1, one bucket (w = 1,
  // d = 1): victims 0 and 1 (lowest) -> one bucket slot {0, 1}: key (0.5, 0), value (0, 0.5), bias ln 2.
  Layer L(1, 1, 6, 2);
  for (int i = 0; i < 6; ++i) L.K(0, i, 0) = static_cast<float>(i), L.V(0, i, 1) = static_cast<float>(i);
  L.colsums = {.1f, .2f, .3f, .4f};
  Driver d("cms_aggregate:budget=2,sinks=0,recent=1,width=1,depth=1", L, 4);
  const SlotCache& c = d.cache(0);
  CHECK(c.size() == 3);
  const int64_t b = c.find(0);
  REQUIRE(b >= 0);
  CHECK(c.view(b) == 1);
  CHECK(c.n_members(b) == 2);
  CHECK(c.key(b)[0] == 0.5f);
  CHECK(c.value(b)[1] == 0.5f);
  CHECK(c.bias(b) == doctest::Approx(std::log(2.0)));
  CHECK(d.pos() == S{0, 2, 3});
  // t = 4: attention 2: .05, 3: .9, 4: .05 -> exact scores 2: .35, 3: 1.3, 4 recent -> 2 folds in:
  // bucket {0, 1, 2}, key mean (1, 0), bias ln 3.
  d.step(4, {{{2, .05f}, {3, .9f}, {4, .05f}}});
  const int64_t b2 = c.find(0);
  CHECK(c.n_members(b2) == 3);
  CHECK(c.key(b2)[0] == 1.0f);
  CHECK(c.bias(b2) == doctest::Approx(std::log(3.0)));
  CHECK(d.pos() == S{0, 3, 4});
}

TEST_CASE("cms_aggregate replay: mass is 1 (every token a member, shares 1/d), ratio counts the buckets") {
  test::TempDir dir;
  const std::string path = dir.file("t.h5");
  traces::SynthOptions o;
  o.tokens = 160, o.seed = 4, o.prefill = 40;
  traces::write_synthetic_trace(path, traces::find_synth_shape("tiny"), o);
  traces::TraceReader r(path);
  auto a = make_strategy("cms_aggregate:budget=24,width=4,depth=3");
  auto h = make_strategy("h2o:budget=24");
  std::vector<const Strategy*> ss = {a.get(), h.get()};
  ReplayOptions opt;
  opt.stats_cache = "off";
  ReplayResult res = replay_trace(r, ss, opt);
  const auto& ma = res.configs[0].summary[int(Metric::mass)];
  CHECK(ma.worst == doctest::Approx(1.0).epsilon(1e-6));
  CHECK(res.configs[0].summary[int(Metric::topk32_recall)].worst == 1.0);
  CHECK(res.configs[1].summary[int(Metric::mass)].mean < 0.999);
  // More memory than h2o at the same budget: up to d * w = 12 bucket slots per (layer, KV head).
  CHECK(res.configs[0].summary[int(Metric::ratio)].mean > res.configs[1].summary[int(Metric::ratio)].mean);
}
