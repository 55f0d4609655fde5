// The budget allocators adakv.BASE and chunkkv.BASE (sim/strategies/allocator.h), each rule on a case
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
  // alpha = 0.2: each of the 4 heads rounds c·0.8 + 1 (B' = 8, int(1.6) = 1) to an integer; the sum of
  // c is 32, so the exact sum is 0.8·32 + 4 = 29.6 candidates and the rounded one is within 4·0.5 of it.
  const int64_t drift = slots("adakv.snapkv:budget=12,window=4") - 16;  // minus the 4 windows
  CHECK(drift >= 28);
  CHECK(drift <= 31);
  // What cannot be wrapped, one line each.
  for (const char* bad : {"adakv.knorm:budget=8", "adakv.tova:budget=8", "adakv.quest:budget=8",
                          "adakv.h2o:budget=8,gqa=none", "chunkkv.adakv.snapkv:budget=8", "nope.snapkv:budget=8",
                          "adakv.nope:budget=8", "adakv.snapkv:budget=8,alpha=-1", "chunkkv.snapkv:budget=8,chunk=0",
                          "adakv.snapkv:budget=8,form=x", "adakv.snapkv:budget=8,unknown=1"}) {
    INFO(bad);
    CHECK_THROWS_AS(make_strategy(bad), UsageError);
  }
  // The wrapper composes with a codec.
  CHECK(make_strategy("adakv.snapkv:budget=64+kivi:bits=2")->name() == "adakv.snapkv+kivi");
}
