// The budget allocators adakv.BASE, chunkkv.BASE and criticalkv.BASE (sim/strategies/allocator.h), each rule on a case
// small enough to compute by hand: h2o is the base, its prompt scores are the prompt's column sums,
// which these tests set directly, so every kept set below is derived in the comments from the rules in
// sim/strategies/STRATEGIES.md, not from running the code. Then the invariant on random data
// (an allocator around snapkv at the same budget holds the same slots per layer) and the bytes of
// uneven budgets. tests/py/test_allocators_numpy.py checks every metric on the embedded trace
// against an independent NumPy replay.
#include <doctest/doctest.h>

#include <set>
#include <string>

#include "sim/base/error.h"
#include "sim/strategies/strategy.h"
#include "tests/sim_test_util.h"

using namespace kvsim;
using kvsim::test::Driver;
using kvsim::test::Layer;
using S = std::set<int32_t>;

namespace {
// Hkv = H = 2 (G = 1), P = 6, T = 8, D = 2. The prompt's column sums (h2o's prompt scores, gqa=mean
// over one head is the head itself):
//   head 0: 0.50 0.40 0.30 0.02 0.01 0.00
//   head 1: 0.05 0.04 0.03 0.02 0.01 0.00
// h2o:budget=3,recent=1 forces token 5 (the newest prompt token) in both heads; the candidates are
// 0..4 and B' = 3 - 1 = 2 per head.
Layer hand_layer() {
  Layer L(2, 2, 8, 2);
  L.colsums = {0.50f, 0.40f, 0.30f, 0.02f, 0.01f, 0.0f, 0.05f, 0.04f, 0.03f, 0.02f, 0.01f, 0.0f};
  return L;
}
int64_t total(const Driver& d) { return d.cache(0).size() + d.cache(1).size(); }
// The prompt tokens a plain (one KV head per instance) strategy keeps in KV head kv.
S plain(const std::string& spec, Layer& L, int64_t P, int64_t kv) {
  auto s = make_strategy(spec);
  LayerView lv = L.view();
  Instance inst(*s, make_context(*s, ModelShape{1, L.H, L.Hkv, L.D}, 0, kv, L.T, P));
  inst.prefill_from(lv);
  return kvsim::test::positions(inst.cache(0));
}
}  // namespace

TEST_CASE("allocator adakv (paper's code): pooled top Hkv·B', capacity round(c·(1-alpha) + int(B'·alpha))") {
  Layer L = hand_layer();
  {
    // Plain h2o keeps its top 2 candidates + 5 in each head: {0, 1, 5}, {0, 1, 5}.
    CHECK(plain("h2o:budget=3,recent=1", L, 6, 0) == S{0, 1, 5});
    CHECK(plain("h2o:budget=3,recent=1", L, 6, 1) == S{0, 1, 5});
  }
  // The layer's top Hkv·B' = 4 candidates: 0.50, 0.40, 0.30 (head 0) and 0.05 (head 1): c = (3, 1).
  {
    // alpha = 0: capacity = c = (3, 1). Head 0 {0, 1, 2} + 5, head 1 {0} + 5; 6 slots, as plain h2o.
    Driver d("adakv.h2o:budget=3,recent=1,alpha=0", L, 6);
    CHECK(d.pos(0) == S{0, 1, 2, 5});
    CHECK(d.pos(1) == S{0, 5});
    CHECK(total(d) == 6);
    // Uneven budgets: the variable-length layout adds one 4-byte length per head (4·D per fp16 K,V slot).
    CHECK(d.inst->bytes(0) == 4.0 * 2 * 4 + 4);
    CHECK(d.inst->bytes(1) == 4.0 * 2 * 2 + 4);
    // Protocol evict: token 6 arrives; each head keeps its own budget (4 and 2): its chosen tokens
    // stay, the forced 5 is now the oldest of the rest and goes.
    d.step(6, {{}, {}});
    CHECK(d.pos(0) == S{0, 1, 2, 6});
    CHECK(d.pos(1) == S{0, 6});
  }
  {
    // alpha = 0.2 (the default): int(2·0.2) = 0; capacity round(3·0.8) = round(2.4) = 2 and
    // round(1·0.8) = 1. Head 0 {0, 1} + 5, head 1 {0} + 5: 5 slots, the reference's rounding drift.
    Driver d("adakv.h2o:budget=3,recent=1", L, 6);
    CHECK(d.pos(0) == S{0, 1, 5});
    CHECK(d.pos(1) == S{0, 5});
    CHECK(d.strat->params().at("alpha") == "0.2");
    CHECK(d.strat->params().at("form") == "original");
  }
  {
    // alpha = 0.5: int(2·0.5) = 1; round(3·0.5 + 1) = round(2.5) = 2 and round(0.5 + 1) = round(1.5) = 2
    // (half to even, as torch.round): the even split {0, 1, 5} in both heads.
    Driver d("adakv.h2o:budget=3,recent=1,alpha=0.5", L, 6);
    CHECK(d.pos(0) == S{0, 1, 5});
    CHECK(d.pos(1) == S{0, 1, 5});
    CHECK(d.inst->bytes(0) == 4.0 * 2 * 3);  // equal budgets: no lengths
  }
}

TEST_CASE("allocator adakv form=kvpress: a safeguard per head, then the layer's lowest scores go") {
  Layer L = hand_layer();
  {
    // n_kept = 3, n_safe = int(3·0.2) = 0; token 5 forced in both heads. Hkv·(P - n_kept) = 6 of the
    // 10 candidates go: the best 4 stay (0.50, 0.40, 0.30 in head 0, 0.05 in head 1).
    Driver d("adakv.h2o:budget=3,recent=1,form=kvpress", L, 6);
    CHECK(d.pos(0) == S{0, 1, 2, 5});
    CHECK(d.pos(1) == S{0, 5});
    CHECK(total(d) == 6);  // exactly Hkv·n_kept
  }
  {
    // alpha = 1: n_safe = 3 per head, forced first: {5, 0, 1} in each; the 6 others all go.
    Driver d("adakv.h2o:budget=3,recent=1,form=kvpress,alpha=1", L, 6);
    CHECK(d.pos(0) == S{0, 1, 5});
    CHECK(d.pos(1) == S{0, 1, 5});
  }
}

TEST_CASE("allocator chunkkv: whole chunks by the mean of the scores summed over heads, the same in every head") {
  Layer L = hand_layer();
  // chunk = 2: chunks [0, 1], [2, 3], [4, 5]. The forced token 5 scores the layer's highest score,
  // 0.50, in each head. Summed over heads: 0.55 0.44 0.33 0.04 0.02 1.00; chunk means 0.495, 0.185, 0.51.
  {
    // budget 3: keep max(1, int(3 chunks · 3/6)) = 1 chunk: [4, 5].
    Driver d("chunkkv.h2o:budget=3,recent=1,chunk=2", L, 6);
    CHECK(d.pos(0) == S{4, 5});
    CHECK(d.pos(1) == S{4, 5});
  }
  {
    // budget 4: int(3 · 4/6) = 2 chunks: [4, 5] and [0, 1].
    Driver d("chunkkv.h2o:budget=4,recent=1,chunk=2", L, 6);
    CHECK(d.pos(0) == S{0, 1, 4, 5});
    CHECK(d.pos(1) == S{0, 1, 4, 5});
    CHECK(d.inst->bytes(0) == 4.0 * 2 * 4);  // the same budget in every head: no lengths
  }
  {
    // chunk = 4: [0, 3] and the tail [4, 5]; means (0.55+0.44+0.33+0.04)/4 = 0.34 and 0.51; budget 3
    // keeps int(2 · 3/6) = 1 chunk: the tail.
    Driver d("chunkkv.h2o:budget=3,recent=1,chunk=4", L, 6);
    CHECK(d.pos(0) == S{4, 5});
  }
  {
    // A prompt shorter than one chunk: the base's own choice, its top 2 + the forced 5 per head.
    Driver d("chunkkv.h2o:budget=3,recent=1", L, 6);
    CHECK(d.pos(0) == S{0, 1, 5});
    CHECK(d.pos(1) == S{0, 1, 5});
  }
}

TEST_CASE("allocator criticalkv: stage 1 by the base's order, stage 2 by (s + eps) times the mean vo_norm") {
  Layer L = hand_layer();
  // vo_norm [H, T] (G = 1: the mean over the group is the head's own row; tokens 6, 7 unused):
  //   head 0: 1 2 10 1 3 1 1 1
  //   head 1: 1 1  1 1 100 1 1 1
  L.vo_norm = {1, 2, 10, 1, 3, 1, 1, 1, 1, 1, 1, 1, 100, 1, 1, 1};
  {
    // budget 3: n_kept = 3, stage 1 keeps int(3·0.5) = 1 by the base's order, forced first: {5}.
    // Stage 2 picks 2 of 0..4 by (s + 1e-4)·n: head 0 0.5001, 0.8002, 3.001, 0.0201, 0.0303 -> {2, 1};
    // head 1 0.0501, 0.0401, 0.0301, 0.0201, 1.01 -> {4, 0}. Plain h2o keeps {0, 1, 5} in both.
    Driver d("criticalkv.h2o:budget=3,recent=1", L, 6);
    CHECK(d.pos(0) == S{1, 2, 5});
    CHECK(d.pos(1) == S{0, 4, 5});
    CHECK(total(d) == 6);
    CHECK(d.inst->bytes(0) == 4.0 * 2 * 3);  // every head holds n_kept: no lengths
    CHECK(d.strat->params().at("eps") == "0.0001");
    CHECK(d.strat->params().at("first") == "0.5");
    CHECK(d.strat->params().at("heads") == "uniform");
  }
  {
    // eps = 1: head 0 1.5, 2.8, 13, 1.02, 3.03 -> {2, 4}; head 1 1.05, 1.04, 1.03, 1.02, 101 -> {4, 0}.
    Driver d("criticalkv.h2o:budget=3,recent=1,eps=1", L, 6);
    CHECK(d.pos(0) == S{2, 4, 5});
    CHECK(d.pos(1) == S{0, 4, 5});
  }
  {
    // budget 4: stage 1 int(4·0.5) = 2: {5, 0}; stage 2 picks 2 of 1..4: head 0 0.8002, 3.001, 0.0201,
    // 0.0303 -> {2, 1}; head 1 0.0401, 0.0301, 0.0201, 1.01 -> {4, 1}.
    Driver d("criticalkv.h2o:budget=4,recent=1", L, 6);
    CHECK(d.pos(0) == S{0, 1, 2, 5});
    CHECK(d.pos(1) == S{0, 1, 4, 5});
  }
  {
    // first = 1: stage 1 takes all 3 by the base's order: plain h2o's {0, 1, 5}.
    Driver d("criticalkv.h2o:budget=3,recent=1,first=1", L, 6);
    CHECK(d.pos(0) == S{0, 1, 5});
    CHECK(d.pos(1) == S{0, 1, 5});
  }
  {
    // heads=adakv: AdaKV's kvpress budgets first (n_safe = int(3·0.2) = 0; the forced 5 in each head;
    // the 4 best of the 10 others stay: 0.50, 0.40, 0.30 of head 0 and 0.05 of head 1): B = (4, 2).
    // Head 0: stage 1 max(int(4·0.5), 0) = 2: {5, 0}; stage 2 picks 2 of 1..4 as above: {1, 2}.
    // Head 1: stage 1 int(2·0.5) = 1: {5}; stage 2 picks 1 of 0..4: 1.01 -> {4}.
    Driver d("criticalkv.h2o:budget=3,recent=1,heads=adakv", L, 6);
    CHECK(d.pos(0) == S{0, 1, 2, 5});
    CHECK(d.pos(1) == S{4, 5});
    CHECK(total(d) == 6);                        // Hkv·n_kept
    CHECK(d.inst->bytes(0) == 4.0 * 2 * 4 + 4);  // uneven budgets: one 4-byte length per head
    CHECK(d.strat->params().at("alpha") == "0.2");
  }
  {
    // heads=adakv, alpha = 1: n_safe = 3 per head, forced first, {5, 0, 1}; nothing is pooled, B = (3, 3);
    // stage 1 = max(int(1.5), 3) = 3: plain h2o's {0, 1, 5} in both.
    Driver d("criticalkv.h2o:budget=3,recent=1,heads=adakv,alpha=1", L, 6);
    CHECK(d.pos(0) == S{0, 1, 5});
    CHECK(d.pos(1) == S{0, 1, 5});
  }
}

TEST_CASE("allocator criticalkv: the group's mean vo_norm, not one query head's nor their max") {
  // Hkv = 1, G = 2, P = T = 4. Both query heads' column sums 0.4 0.3 0.2 0.0: h2o's gqa=mean scores.
  // h2o:budget=2,recent=1 forces 3; stage 1 int(2·0.5) = 1: {3}; stage 2 picks 1 of 0..2.
  Layer L(2, 1, 4, 2);
  L.colsums = {0.4f, 0.3f, 0.2f, 0.0f, 0.4f, 0.3f, 0.2f, 0.0f};
  // g0 = 2 3 0 ., g1 = 2 0 0 .: mean 2, 1.5, 0 -> 0.8002, 0.45015, 0 -> {0}. (g0 alone or the max
  // would score token 1 at 0.9003 and keep it.)
  L.vo_norm = {2, 3, 0, 1, 2, 0, 0, 1};
  {
    Driver d("criticalkv.h2o:budget=2,recent=1", L, 4);
    CHECK(d.pos(0) == S{0, 3});
  }
  // Rows swapped: the same mean, the same choice (g1 alone would now keep 1).
  L.vo_norm = {2, 0, 0, 1, 2, 3, 0, 1};
  {
    Driver d("criticalkv.h2o:budget=2,recent=1", L, 4);
    CHECK(d.pos(0) == S{0, 3});
  }
  // g0 = 1 5 0, g1 = 2 0 0: mean 1.5, 2.5, 0 -> 0.60015, 0.75025, 0 -> {1}.
  L.vo_norm = {1, 5, 0, 1, 2, 0, 0, 1};
  {
    Driver d("criticalkv.h2o:budget=2,recent=1", L, 4);
    CHECK(d.pos(0) == S{1, 3});
  }
}

TEST_CASE("allocators around snapkv hold the layer's slots of plain snapkv, and refuse what they cannot wrap") {
  // Random data, Hkv = 4, G = 2, P = 48, window 4, budget 12: plain snapkv holds 4 · 12 = 48 slots.
  Layer L(8, 4, 56, 8);
  L.fill_random(5);
  const auto slots = [&](const std::string& spec) {
    int64_t n = 0;
    const auto kept = kvsim::test::kept_sets(*make_strategy(spec), L, 48, Backend::ref);
    for (const auto& head : kept[0]) n += static_cast<int64_t>(head.size());
    return n;
  };
  CHECK(slots("snapkv:budget=12,window=4") == 48);
  CHECK(slots("adakv.snapkv:budget=12,window=4,form=kvpress") == 48);
  CHECK(slots("adakv.snapkv:budget=12,window=4,form=kvpress,alpha=0.5") == 48);
  CHECK(slots("adakv.snapkv:budget=12,window=4,alpha=0") == 48);  // capacity = c exactly
  L.vo_norm.resize(static_cast<size_t>(L.H * L.T));
  for (size_t i = 0; i < L.vo_norm.size(); ++i) L.vo_norm[i] = 0.5f + static_cast<float>((i * 37) % 11);
  CHECK(slots("criticalkv.snapkv:budget=12,window=4") == 48);
  CHECK(slots("criticalkv.snapkv:budget=12,window=4,heads=adakv") == 48);
  // alpha = 0.2: each of the 4 heads rounds c·0.8 + 1 (B' = 8, int(1.6) = 1) to an integer; the sum of
  // c is 32, so the exact sum is 0.8·32 + 4 = 29.6 candidates and the rounded one is within 4·0.5 of it.
  const int64_t drift = slots("adakv.snapkv:budget=12,window=4") - 16;  // minus the 4 windows
  CHECK(drift >= 28);
  CHECK(drift <= 31);
  // What cannot be wrapped, one line each.
  for (const char* bad :
       {"adakv.knorm:budget=8", "adakv.tova:budget=8", "adakv.quest:budget=8", "adakv.h2o:budget=8,gqa=none",
        "chunkkv.adakv.snapkv:budget=8", "nope.snapkv:budget=8", "adakv.nope:budget=8",
        "adakv.snapkv:budget=8,alpha=-1", "chunkkv.snapkv:budget=8,chunk=0", "adakv.snapkv:budget=8,form=x",
        "adakv.snapkv:budget=8,unknown=1", "criticalkv.snapkv:budget=8,eps=-1", "criticalkv.snapkv:budget=8,first=2",
        "criticalkv.snapkv:budget=8,heads=x", "criticalkv.snapkv:budget=8,alpha=0.5", "criticalkv.knorm:budget=8"}) {
    INFO(bad);
    CHECK_THROWS_AS(make_strategy(bad), UsageError);
  }
  // The wrapper composes with a codec.
  CHECK(make_strategy("adakv.snapkv:budget=64+kivi:bits=2")->name() == "adakv.snapkv+kivi");
}
