// Each strategy's rule, step by step, on cases small enough to check by hand. Attention is fed to
// `observe` directly (weights chosen per position), so every decision can be followed in the comments.
#include <doctest/doctest.h>

#include <cmath>
#include <map>

#include "sim/base/error.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/strategy.h"
#include "tests/sim_test_util.h"

using namespace kvsim;
using kvsim::test::Driver;
using kvsim::test::Layer;
using kvsim::test::positions;
using kvsim::test::weights_by_pos;
using S = std::set<int32_t>;

namespace {}  // namespace

TEST_CASE("strategy full keeps every token") {
  Layer L(1, 1, 6, 4);
  Driver d("full", L, 3);
  CHECK(d.pos() == S{0, 1, 2});
  d.step(3, {{}});
  d.step(4, {{}});
  CHECK(d.pos() == S{0, 1, 2, 3, 4});
}

TEST_CASE("strategy window keeps the newest B") {
  Layer L(1, 1, 6, 4);
  Driver d("window:budget=3", L, 4);
  CHECK(d.pos() == S{1, 2, 3});  // prefill 0..3 -> the newest 3
  d.step(4, {{}});
  CHECK(d.pos() == S{2, 3, 4});
  d.step(5, {{}});
  CHECK(d.pos() == S{3, 4, 5});
}

TEST_CASE("strategy streaming keeps sinks plus the newest, and the prefix variant") {
  Layer L(1, 1, 8, 4);
  Driver d("streaming:budget=4,sinks=2", L, 6);
  CHECK(d.pos() == S{0, 1, 4, 5});  // sinks 0, 1 + newest 2 of the prompt
  d.step(6, {{}});
  CHECK(d.pos() == S{0, 1, 5, 6});
  CHECK_THROWS_AS(make_strategy("streaming:budget=4"), UsageError);  // default 4 sinks: budget must exceed them
  Driver p("streaming:budget=6,prefix=1,block=3", L, 7);
  CHECK(p.pos() == S{0, 1, 2, 4, 5, 6});          // prefix block 0..2 + newest 3
  Driver q("streaming:budget=6,prefix=1", L, 7);  // block = B/2 = 3
  CHECK(q.pos() == S{0, 1, 2, 4, 5, 6});
}

TEST_CASE("strategy h2o: accumulated attention, recent window, norm=mean") {
  // P = 4, budget 3, recent 1. Prompt column sums (set by hand) = (0.5, 2.4, 1.5, 0.5).
  Layer L(1, 1, 6, 4);
  L.colsums = {0.5f, 2.4f, 1.5f, 0.5f};
  {
    Driver d("h2o:budget=3,recent=1", L, 4);
    // Prefill: 3 is recent; among 0, 1, 2 the lowest score is 0 (0.5): evicted.
    CHECK(d.pos() == S{1, 2, 3});
    // t = 4: attention 1: 0, 2: 0, 3: 0.9, 4: 0.1 -> scores 1: 2.4, 2: 1.5, 3: 1.4; 4 is recent.
    // Lowest: 3 (1.4).
    d.step(4, {{{3, 0.9f}, {4, 0.1f}}});
    CHECK(d.pos() == S{1, 2, 4});
  }
  {
    Driver d("h2o:budget=3,recent=1,norm=mean", L, 4);
    // Prefill: seen counts (P - i) = (4, 3, 2, 1): means 0: 0.125, 1: 0.8, 2: 0.75 -> evict 0.
    CHECK(d.pos() == S{1, 2, 3});
    // t = 4: sums 1: 2.4, 2: 1.5, 3: 1.4; counts 1: 4, 2: 3, 3: 2 -> means 0.6, 0.5, 0.7 -> evict 2.
    d.step(4, {{{3, 0.9f}, {4, 0.1f}}});
    CHECK(d.pos() == S{1, 3, 4});
  }
  {
    // Ties: equal scores keep the lower position (evict the higher one).
    L.colsums = {1.0f, 1.0f, 1.0f, 1.0f};
    Driver d("h2o:budget=2,recent=0", L, 4);
    CHECK(d.pos() == S{0, 1});
  }
}

TEST_CASE("strategy h2o prefill uses the prompt's column sums combined over G (gqa)") {
  // G = 2 query heads on one KV head; colsums per head (hand-set): h0 = (1, 0, 0.2, 0), h1 = (0, 0.9, 0.2, 0).
  // mean: (0.5, 0.45, 0.2, 0) -> keep top 2 of {0,1,2} (recent 1 keeps 3): {0, 1};
  // max: (1, 0.9, 0.2, 0) -> {0, 1}; with h1 = (0, 1.2, ...): mean (0.5, 0.6) still {0, 1} but drop differs below.
  Layer L(2, 1, 5, 4);
  L.colsums = {1.0f, 0.0f, 0.6f, 0.0f, /* h1 */ 0.0f, 0.9f, 0.6f, 0.0f};
  // mean = (0.5, 0.45, 0.6, 0) -> keep 2 and 0, evict 1; max = (1, 0.9, 0.6, 0) -> keep 0 and 1, evict 2.
  CHECK(Driver("h2o:budget=3,recent=1,gqa=mean", L, 4).pos() == S{0, 2, 3});
  CHECK(Driver("h2o:budget=3,recent=1,gqa=max", L, 4).pos() == S{0, 1, 3});
  // sum = (1, 0.9, 1.2, 0) -> keep 2 and 0.
  CHECK(Driver("h2o:budget=3,recent=1,gqa=sum", L, 4).pos() == S{0, 2, 3});
}

TEST_CASE("strategy tova: lowest attention averaged over the layer's heads, same token in every KV head") {
  // Hkv = 2, G = 1, D = 4, P = 3, budget 2. q_2 = (2, 0, 0, 0) in both heads, so logits = k[0].
  // Head 0 keys z = (0, ln 2, 0): P = (1/4, 1/2, 1/4). Head 1 keys z = (ln 3, 0, 0): P = (3/5, 1/5, 1/5).
  // Averages: 0: 0.425, 1: 0.35, 2: protected (newest). Evict 1 from both heads.
  Layer L(2, 2, 6, 4);
  L.Q(0, 2, 0) = 2, L.Q(1, 2, 0) = 2;
  L.K(0, 1, 0) = std::log(2.0f);
  L.K(1, 0, 0) = std::log(3.0f);
  Driver d("tova:budget=2", L, 3);
  CHECK(d.pos(0) == S{0, 2});
  CHECK(d.pos(1) == S{0, 2});
  // t = 3: head 0 weights {0: .1, 2: .5, 3: .4}, head 1 {0: .3, 2: .3, 3: .4}: averages 0: .2, 2: .4,
  // 3: newest (kept). Evict 0 from both.
  d.step(3, {{{0, 0.1f}, {2, 0.5f}, {3, 0.4f}}, {{0, 0.3f}, {2, 0.3f}, {3, 0.4f}}});
  CHECK(d.pos(0) == S{2, 3});
  CHECK(d.pos(1) == S{2, 3});
}

TEST_CASE("strategy scissorhands: hits above 1/n within the history window, drop m = 0.5 B at once") {
  // budget 4, recent 1, drop 0.5 -> m = 2, history 2. Zero queries: uniform prompt attention, no
  // weight strictly above 1/(j+1), so no prompt hits; P = 4 <= B keeps all.
  Layer L(1, 1, 8, 4);
  Driver d("scissorhands:budget=4,recent=1,drop=0.5,history=2", L, 4);
  CHECK(d.pos() == S{0, 1, 2, 3});
  // t = 4: n = 5, threshold 0.2: weights {0: .3, 1: .1, 2: .25, 3: .05, 4: .3} -> hits 0, 2, 4.
  // Over budget (5 > 4): drop 2 least important outside recent {4}: counts 0:1 1:0 2:1 3:0 -> drop 1, 3.
  d.step(4, {{{0, 0.3f}, {1, 0.1f}, {2, 0.25f}, {3, 0.05f}, {4, 0.3f}}});
  CHECK(d.pos() == S{0, 2, 4});
  // t = 5: n = 4, threshold 0.25: {0: .1, 2: .1, 4: .5, 5: .3} -> hits 4, 5. 4 slots: no eviction.
  d.step(5, {{{0, 0.1f}, {2, 0.1f}, {4, 0.5f}, {5, 0.3f}}});
  CHECK(d.pos() == S{0, 2, 4, 5});
  // t = 6: n = 5, threshold 0.2: {4: .3, 5: .3, 6: .3} -> hits 4, 5, 6; step 4 leaves the window
  // (history 2): counts 0: 0, 2: 0, 4: 2, 5: 2, 6: 1. Drop 2 outside {6}: 0 and 2.
  d.step(6, {{{0, 0.05f}, {2, 0.05f}, {4, 0.3f}, {5, 0.3f}, {6, 0.3f}}});
  CHECK(d.pos() == S{4, 5, 6});
}

TEST_CASE("strategy snapkv: window votes, pooling, then a sliding window in decode") {
  // P = 6, window 2, budget 4: keep the top 2 of tokens 0..3 by votes, plus the window {4, 5}.
  // q_4 = q_5 = (2, 0, 0, 0); keys z = (ln 4, 0, ln 2, ln 3, 0, 0).
  // Query 4 over 0..4: (4, 1, 2, 3, 1)/11; query 5 over 0..5: (4, 1, 2, 3, 1, 1)/12.
  // votes: 0: 4/11 + 4/12 = .697, 1: .174, 2: .348, 3: .523 -> with kernel 1: keep {0, 3}.
  Layer L(1, 1, 8, 4);
  L.Q(0, 4, 0) = 2, L.Q(0, 5, 0) = 2;
  L.K(0, 0, 0) = std::log(4.0f), L.K(0, 2, 0) = std::log(2.0f), L.K(0, 3, 0) = std::log(3.0f);
  Driver d("snapkv:budget=4,window=2,kernel=1", L, 6);
  CHECK(d.pos() == S{0, 3, 4, 5});
  // Decode: the selected prompt tokens stay; the window slides: t = 6 evicts 4 (oldest other).
  d.step(6, {{}});
  CHECK(d.pos() == S{0, 3, 5, 6});
  d.step(7, {{}});
  CHECK(d.pos() == S{0, 3, 6, 7});
  // kernel 3, max pooling: pooled 0: max(v0, v1) = .697, 1: max(v0..v2) = .697, 2: .523, 3: .523
  // -> the tie between 0 and 1 keeps both (lower positions first): {0, 1}.
  CHECK(Driver("snapkv:budget=4,window=2,kernel=3", L, 6).pos() == S{0, 1, 4, 5});
  // avg_clipped pooling (kvsim's former avg), kernel 3, divided by the in-range count: 0: (.697+.174)/2
  // = .436, 1: (.697+.174+.348)/3 = .406, 2: (.174+.348+.523)/3 = .348, 3: (.348+.523)/2 = .436 -> {0, 3}.
  CHECK(Driver("snapkv:budget=4,window=2,kernel=3,pool=avg_clipped", L, 6).pos() == S{0, 3, 4, 5});
  // avg pooling as F.avg_pool1d(padding=1): zero padding, divided by the kernel 3: 0: (0+.697+.174)/3
  // = .290, 1: .406, 2: .348, 3: (.348+.523+0)/3 = .290 -> {1, 2}: the ends are pulled down.
  CHECK(Driver("snapkv:budget=4,window=2,kernel=3,pool=avg", L, 6).pos() == S{1, 2, 4, 5});
}

TEST_CASE("strategy pyramidkv: per-layer budgets, the reference's integer schedule and cap at P - window") {
  Layer L(1, 1, 220, 4);
  L.fill_random(7);
  auto size = [&](const std::string& spec, int64_t P, int64_t l, int64_t n_layers = 5) {
    return Driver(spec, L, P, l, n_layers).cache(0).size();
  };
  // schedule=reference, C = 64, w = 8, beta = 20, L = 5, P = 200 (>= 2(C - w) = 112): min = 56 // 20 = 2,
  // max = 112 - 2 = 110 (< P - w = 192: no cap), step = (110 - 2) // 4 = 27; budget_l = 110 - 27 l + 8:
  // l=0: 118, l=2: 64, l=4: 10.
  const std::string ref = "pyramidkv:budget=64,window=8";
  CHECK(size(ref, 200, 0) == 118);
  CHECK(size(ref, 200, 2) == 64);
  CHECK(size(ref, 200, 4) == 10);
  CHECK(size(ref, 200, 0, 1) == 64);  // one layer: C
  // P = 115: max = 110 >= P - w = 107 -> max = 107, min = 112 - 107 = 5, step = 102 // 4 = 25:
  // l=0: 107 + 8 = 115 (the whole prompt), l=2: 57 + 8 = 65, l=4: 7 + 8 = 15.
  CHECK(size(ref, 115, 0) == 115);
  CHECK(size(ref, 115, 2) == 65);
  CHECK(size(ref, 115, 4) == 15);
  // P = 100 < 2(C - w): every layer keeps C (the reference's SnapKV branch).
  CHECK(size(ref, 100, 0) == 64);
  CHECK(size(ref, 100, 4) == 64);
  // schedule=capped at P = 100: max = 110 >= 92 -> max = 92, min = 20, step = 72 // 4 = 18:
  // l=0: 92 + 8 = 100, l=2: 56 + 8 = 64, l=4: 20 + 8 = 28.
  CHECK(size(ref + ",schedule=capped", 100, 0) == 100);
  CHECK(size(ref + ",schedule=capped", 100, 2) == 64);
  CHECK(size(ref + ",schedule=capped", 100, 4) == 28);
  // schedule=round (the former rule): min = 2.8, max = 109.2, budget_l = round(max - l (max - min)/4) + w:
  // l=0: 109 + 8 = 117, l=2: 56 + 8 = 64, l=4: 3 + 8 = 11; uncapped, so at P = 100 layer 0 keeps all 100.
  CHECK(size(ref + ",schedule=round", 200, 0) == 117);
  CHECK(size(ref + ",schedule=round", 200, 2) == 64);
  CHECK(size(ref + ",schedule=round", 200, 4) == 11);
  CHECK(size(ref + ",schedule=round", 100, 0) == 100);
  CHECK_THROWS_AS(make_strategy(ref + ",schedule=linear"), UsageError);
}

TEST_CASE("gqa: one order, each query row combined over G, then summed (combined_prompt_colsums)") {
  // H = 2, Hkv = 1, D = 4, P = 3; keys k0 = (2 ln 8, 0, 0, 0), k1 = k2 = 0; logits q.k / 2.
  // Row 0: both heads (1). Row 1: head 0 q = 0 -> (.5, .5); head 1 q = (2/3, 0, 0, 0) -> logits (ln 4, 0)
  // -> (.8, .2). Row 2: head 0 q = (1, 0, 0, 0) -> (ln 8, 0, 0) -> (.8, .1, .1); head 1 q = 0 -> 1/3 each.
  // max per row, then summed: tok0 1 + .8 + .8 = 2.6, tok1 .5 + 1/3, tok2 1/3. (The max of the per-head
  // column sums would give tok0 max(2.3, 2.1333) = 2.3.) mean: tok0 (2.3 + 2.1333)/2, tok1 (.6 + .5333)/2,
  // tok2 (.1 + .3333)/2; sum: twice the mean.
  Layer L(2, 1, 4, 4);
  L.K(0, 0, 0) = 2 * std::log(8.0f);
  L.Q(1, 1, 0) = 2.0f / 3.0f;
  L.Q(0, 2, 0) = 1.0f;
  LayerView lv = L.view();
  ExactStats rs;
  compute_exact_stats(lv, Backend::ref, rs);
  compute_prompt_colsums(lv, rs, 3, Backend::ref, L.colsums);
  lv.prompt_colsums = L.colsums.data();
  float out[3];
  combined_prompt_colsums(lv, {0, 0, 2}, 3, Gqa::max, out);
  CHECK(out[0] == doctest::Approx(2.6).epsilon(1e-5));
  CHECK(out[1] == doctest::Approx(.5 + 1.0 / 3).epsilon(1e-5));
  CHECK(out[2] == doctest::Approx(1.0 / 3).epsilon(1e-5));
  combined_prompt_colsums(lv, {0, 0, 2}, 3, Gqa::mean, out);
  CHECK(out[0] == doctest::Approx((2.3 + 1 + .8 + 1.0 / 3) / 2).epsilon(1e-5));
  CHECK(out[1] == doctest::Approx((.6 + .2 + 1.0 / 3) / 2).epsilon(1e-5));
  CHECK(out[2] == doctest::Approx((.1 + 1.0 / 3) / 2).epsilon(1e-5));
  combined_prompt_colsums(lv, {0, 0, 2}, 3, Gqa::sum, out);
  CHECK(out[0] == doctest::Approx(2.3 + 1 + .8 + 1.0 / 3).epsilon(1e-5));
  // One query head (gqa=none's group): that head's own column sums (head 1: 1 + .8 + 1/3).
  combined_prompt_colsums(lv, {0, 1, 1}, 3, Gqa::none, out);
  CHECK(out[0] == doctest::Approx(1 + .8 + 1.0 / 3).epsilon(1e-5));
}

TEST_CASE("gqa=none: one cache per query head, each the strategy run on that head alone") {
  // snapkv by hand: H = 2, Hkv = 1, P = 6, window 2, budget 3, kernel 1. k0 = (3, 0, 0, 0),
  // k1 = (0, 3, 0, 0), others 0; window queries of head 0 = (2, 0, 0, 0) (token 0 gets e^3 of the
  // row), of head 1 = (0, 2, 0, 0) (token 1 does). Each head keeps its own token plus the window.
  Layer L(2, 1, 8, 4);
  L.K(0, 0, 0) = 3, L.K(0, 1, 1) = 3;
  for (int64_t j : {4, 5}) L.Q(0, j, 0) = 2, L.Q(1, j, 1) = 2;
  Driver d("snapkv:budget=3,window=2,kernel=1,gqa=none", L, 6);
  REQUIRE(d.inst->n_caches() == 2);
  CHECK(d.inst->rows() == 1);
  CHECK(d.inst->kv_of(1) == 0);
  CHECK(d.inst->q_head(1, 0) == 1);
  CHECK(d.pos(0) == S{0, 4, 5});
  CHECK(d.pos(1) == S{1, 4, 5});
  // Bytes: 3 fp16 slots of D = 4 are 3 x 2 x 2 x 4 = 48 per cache; the KV head holds both caches.
  CHECK(d.inst->bytes(0) == 48);
  CHECK(d.inst->kv_bytes(0) == 96);
  // Shared selection (gqa=mean): one cache for both heads.
  Driver m("snapkv:budget=3,window=2,kernel=1", L, 6);
  CHECK(m.inst->n_caches() == 1);
  CHECK(m.pos(0).size() == 3);
  CHECK(m.inst->kv_bytes(0) == 48);
  // Independent check on random data: cache g of gqa=none equals the strategy run on a layer with
  // query head g alone (H = Hkv = 1, the MHA code path), at every step, for snapkv, pyramidkv and h2o.
  Layer R(2, 1, 24, 4);
  R.fill_random(11);
  for (const std::string spec : {"snapkv:budget=8,window=3,kernel=3", "pyramidkv:budget=8,window=3",
                                 "h2o:budget=6,recent=2", "h2o:budget=6,norm=mean"}) {
    CAPTURE(spec);
    auto none = make_strategy(spec + ",gqa=none");
    const auto both = kvsim::test::kept_sets_per_query_head(*none, R, 12, kernels(Backend::ref).attend_slots);
    for (int64_t g = 0; g < 2; ++g) {
      Layer one(1, 1, R.T, R.D);
      one.k = R.k, one.v = R.v;
      std::copy(R.q.begin() + g * R.T * R.D, R.q.begin() + (g + 1) * R.T * R.D, one.q.begin());
      auto s = make_strategy(spec);
      const auto ref = kvsim::test::kept_sets(*s, one, 12, Backend::ref);
      for (size_t step = 0; step < ref.size(); ++step) CHECK(both[step][g] == ref[step][0]);
    }
  }
  CHECK_THROWS_AS(make_strategy("scissorhands:budget=8,gqa=none"), UsageError);
}

TEST_CASE("strategy knorm keeps the smallest key norms") {
  // Key norms (3, 1, 2, 0.5): budget 2 keeps {1, 3}; then token 4 with norm 0.7 evicts 1 (norm 1).
  Layer L(1, 1, 6, 4);
  const float n[5] = {3, 1, 2, 0.5f, 0.7f};
  for (int i = 0; i < 5; ++i) L.K(0, i, 1) = n[i];
  Driver d("knorm:budget=2", L, 4);
  CHECK(d.pos() == S{1, 3});
  d.step(4, {{}});
  CHECK(d.pos() == S{3, 4});
}

TEST_CASE("strategy random: exactly B kept, seeded, sinks and recent protected, roughly uniform") {
  Layer L(1, 1, 40, 4);
  auto a = test::kept_sets(*make_strategy("random:budget=8,sinks=1,recent=2,seed=3"), L, 10, Backend::ref);
  auto b = test::kept_sets(*make_strategy("random:budget=8,sinks=1,recent=2,seed=3"), L, 10, Backend::ref);
  auto c = test::kept_sets(*make_strategy("random:budget=8,sinks=1,recent=2,seed=4"), L, 10, Backend::ref);
  CHECK(a == b);
  CHECK(a != c);
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i][0].size() == 8);
    CHECK(a[i][0].count(0) == 1);
    const int32_t t = int32_t(9 + i);
    CHECK(a[i][0].count(t) == 1);
    CHECK(a[i][0].count(t - 1) == 1);
  }
  // Prefill of 10 into 8 over 400 seeds: each unprotected position (1..7) is evicted with p = 2/7.
  std::vector<int> evicted(10, 0);
  for (int seed = 0; seed < 400; ++seed) {
    auto k = test::kept_sets(*make_strategy("random:budget=8,sinks=1,recent=2,seed=" + std::to_string(seed)), L, 10,
                             Backend::ref);
    for (int p = 0; p < 10; ++p) evicted[p] += k[0][0].count(p) ? 0 : 1;
  }
  CHECK(evicted[0] == 0);
  CHECK(evicted[8] == 0);
  CHECK(evicted[9] == 0);
  for (int p = 1; p < 8; ++p) {  // expected 400 x 2/7 = 114.3, sd ~9: allow +-45
    INFO("position " << p << " evicted " << evicted[p] << " times");
    CHECK(std::abs(evicted[p] - 114) < 45);
  }
}

TEST_CASE("strategy specs: parsing and errors list the valid choices") {
  auto msg = [](const std::string& spec) {
    try {
      make_strategy(spec);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(msg("h2o:budget=8,recent=2").find("no error") == 0);
  CHECK(msg("nope").find("valid: full, window, streaming, h2o, tova") != std::string::npos);
  CHECK(msg("h2o:budget=8,bogus=1").find("unknown parameter 'bogus'") != std::string::npos);
  CHECK(msg("h2o:budget=8,bogus=1").find("valid: budget, ratio, press_ratio, sinks, recent, gqa, norm") !=
        std::string::npos);
  CHECK(msg("h2o:budget=8,sinks=4,recent=4").find("must exceed sinks + recent = 4 + 4") != std::string::npos);
  CHECK(msg("h2o:budget=8,norm=median").find("not one of sum, mean") != std::string::npos);
  CHECK(msg("h2o:budget=x").find("not an integer") != std::string::npos);
  CHECK(msg("h2o").find("exactly one of budget") != std::string::npos);
  CHECK(msg("h2o:budget=8,ratio=0.5").find("exactly one of budget") != std::string::npos);
  CHECK(msg("h2o:budget").find("not key=value") != std::string::npos);
  CHECK(msg("h2o:budget=8,budget=9").find("given twice") != std::string::npos);
  CHECK(msg("full:budget=8").find("takes no parameters") != std::string::npos);
  CHECK(msg("snapkv:budget=32,window=32").find("must exceed window") != std::string::npos);
  CHECK(msg("streaming:budget=4").find("must exceed sinks + recent = 4 + 0") != std::string::npos);
  auto s = make_strategy("h2o:ratio=0.25");
  CHECK(s->params().at("recent") == "budget/2");
  CHECK(s->params().at("gqa") == "mean");
  InstanceContext ctx;
  ctx.T = 100, ctx.P = 10, ctx.D = 4;
  CHECK_NOTHROW(s->make_state(ctx));  // B = 25, recent 12
  ctx.T = 4;                          // B = 1, recent 0: 1 > 0 fine
  CHECK_NOTHROW(s->make_state(ctx));
  CHECK_THROWS_AS(make_strategy("knorm:ratio=0.1,recent=20")->make_state([] {
    InstanceContext c;
    c.T = 100;
    return c;
  }()),
                  UsageError);
}

TEST_CASE("strategy snapkv: a prompt that fits is kept, but only the top B - window stay for good") {
  // Same keys as above, P = 6, budget 7, window 2: nothing is evicted at prefill, and the heavy set
  // is the top B - w = 5 of the candidates 0..3, i.e. all four.
  Layer L(1, 1, 9, 4);
  L.Q(0, 4, 0) = 2, L.Q(0, 5, 0) = 2;
  L.K(0, 0, 0) = std::log(4.0f), L.K(0, 2, 0) = std::log(2.0f), L.K(0, 3, 0) = std::log(3.0f);
  Driver d("snapkv:budget=7,window=2,kernel=1", L, 6);
  CHECK(d.pos() == S{0, 1, 2, 3, 4, 5});  // the prompt fits in 7
  d.step(6, {{}});
  CHECK(d.pos() == S{0, 1, 2, 3, 4, 5, 6});
  // t = 7: 8 slots > 7: heavy = top B - w = 5 of {0..3} = all four; the oldest other (4) goes.
  d.step(7, {{}});
  CHECK(d.pos() == S{0, 1, 2, 3, 5, 6, 7});
  Driver f("snapkv:budget=4,window=2,kernel=1", L, 4);
  // P = 4 fits. Window = queries 2, 3 (q = 0: uniform rows) over candidates {0, 1}: votes 0: 1/3 + 1/4,
  // 1: 1/3 + 1/4 (tie) -> heavy = top B - w = 2 -> {0, 1}. t = 4: 5 slots: evict the oldest other, 2.
  CHECK(f.pos() == S{0, 1, 2, 3});
  f.step(4, {{}});
  CHECK(f.pos() == S{0, 1, 3, 4});
}
