// The merge pass behind entropy_merge (sim/strategies/merge.h). Expected slots are worked out by hand in the
// comments; the property test checks the rule's monotonicity in the threshold.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "sim/strategies/merge.h"

using namespace kvsim;

namespace {

// Tokens 0..n-1 with key (i, 0) and value (0, i), all exact.
SlotCache ramp_cache(int n) {
  SlotCache c(2, n);
  for (int i = 0; i < n; ++i) {
    const float k[2] = {static_cast<float>(i), 0.0f}, v[2] = {0.0f, static_cast<float>(i)};
    c.append_exact(i, k, v);
  }
  return c;
}

int64_t slot_of(const SlotCache& c, int32_t first) { return c.find(first); }

}  // namespace

TEST_CASE("merge: runs split by a low-entropy token, then a merged slot grows up to max_span") {
  SlotCache c = ramp_cache(8);
  MergeRule rule;
  rule.sinks = 1;
  rule.recent = 2;
  rule.threshold = 0.5;
  rule.max_span = 3;
  std::vector<float> h = {0, .9f, .9f, .1f, .9f, .9f, .9f, .9f, .9f, .9f};
  MergeState st;
  st.score = {10, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  st.weight.assign(10, 1.0);
  // t = 7: mergeable = outside sink 0 and the recent window {6, 7}, with h >= 0.5: 1, 2, 4, 5.
  // Token 3 (h = 0.1) splits them: runs {1, 2} and {4, 5}.
  CHECK(merge_adjacent_runs(c, rule, h.data(), st, 7) == 2);
  CHECK(c.size() == 6);
  int64_t a = slot_of(c, 1), b = slot_of(c, 4);
  REQUIRE(a >= 0);
  REQUIRE(b >= 0);
  CHECK(c.n_members(a) == 2);
  CHECK(c.member(a, 1) == 2);
  CHECK(c.key(a)[0] == 1.5f);  // (1 + 2) / 2
  CHECK(c.value(a)[1] == 1.5f);
  CHECK(c.bias(a) == doctest::Approx(std::log(2.0)));
  CHECK_FALSE(c.exact(a));
  CHECK(c.key(b)[0] == 4.5f);
  CHECK(st.score[1] == 3.0);  // 1 + 2
  CHECK(st.score[4] == 9.0);  // 4 + 5
  CHECK(slot_of(c, 3) >= 0);
  CHECK(c.exact(slot_of(c, 3)));
  CHECK(merged_tokens(c) == 4);

  // Append 8 and 9; t = 9: mergeable up to position 7. {1,2} stays alone (3 breaks the run);
  // {4,5}, 6, 7 form a run of 4 members > max_span 3: greedy pieces {4,5}+6 (3 members) and 7 alone.
  for (int i = 8; i < 10; ++i) {
    const float k[2] = {static_cast<float>(i), 0.0f}, v[2] = {0.0f, static_cast<float>(i)};
    c.append_exact(i, k, v);
  }
  CHECK(merge_adjacent_runs(c, rule, h.data(), st, 9) == 1);
  b = slot_of(c, 4);
  CHECK(c.n_members(b) == 3);
  CHECK(c.member(b, 2) == 6);
  CHECK(c.key(b)[0] == 5.0f);  // weights 2 ({4,5}) and 1 (6): (2 * 4.5 + 6) / 3 = 5
  CHECK(c.bias(b) == doctest::Approx(std::log(3.0)));
  CHECK(st.score[4] == 15.0);  // 9 + 6
  CHECK(c.exact(slot_of(c, 7)));
  CHECK(c.size() == 7);  // 0, {1,2}, 3, {4,5,6}, 7, 8, 9
}

TEST_CASE("merge: attention weights and proportional attention off") {
  SlotCache c = ramp_cache(6);
  MergeRule rule;
  rule.sinks = 1;
  rule.recent = 1;
  rule.threshold = 0.0;
  rule.max_span = 2;
  rule.proportional = false;
  std::vector<float> h(6, 1.0f);
  MergeState st;
  st.score = {0, 1, 2, 3, 1, 0};
  st.weight = {1, 1, 2, 3, 1, 1};  // attention weights as the strategy sets them
  // t = 5: mergeable 1..4, pieces of 2: {1,2}, {3,4}. Keys: (1*1 + 2*2)/3 = 5/3, (3*3 + 1*4)/4 = 13/4.
  CHECK(merge_adjacent_runs(c, rule, h.data(), st, 5) == 2);
  CHECK(c.key(slot_of(c, 1))[0] == doctest::Approx(5.0 / 3.0));
  CHECK(c.key(slot_of(c, 3))[0] == doctest::Approx(13.0 / 4.0));
  CHECK(c.bias(slot_of(c, 1)) == 0.0f);
  CHECK(st.weight[3] == 4.0);
}

TEST_CASE("merge: normalized entropy is H / log(i + 1), 0 for the first token") {
  CHECK(normalized_entropy(0.7f, 0) == 0.0f);
  CHECK(normalized_entropy(static_cast<float>(std::log(4.0)), 3) == doctest::Approx(1.0));  // uniform over 4
  CHECK(normalized_entropy(static_cast<float>(std::log(2.0)), 3) == doctest::Approx(0.5));
}

TEST_CASE("merge property: raising the threshold never increases the merged tokens (seeds 1..200)") {
  for (uint32_t seed = 1; seed <= 200; ++seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    const int n = 20 + static_cast<int>(seed % 60);
    std::vector<float> h(static_cast<size_t>(n));
    for (auto& x : h) x = u(rng);
    int64_t prev = INT64_MAX;
    for (double thr : {0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0}) {
      SlotCache c = ramp_cache(n);
      MergeRule rule;
      rule.sinks = static_cast<int64_t>(seed % 5);
      rule.recent = static_cast<int64_t>(seed % 7);
      rule.threshold = thr;
      rule.max_span = 2 + static_cast<int64_t>(seed % 9);
      MergeState st;
      st.score.assign(static_cast<size_t>(n), 1.0);
      st.weight.assign(static_cast<size_t>(n), 1.0);
      merge_adjacent_runs(c, rule, h.data(), st, n - 1);
      const int64_t m = merged_tokens(c);
      REQUIRE_MESSAGE(m <= prev, "seed " << seed << " threshold " << thr);
      prev = m;
      // Every token is still a member of exactly one slot.
      std::vector<int> seen(static_cast<size_t>(n), 0);
      for (int64_t s = 0; s < c.size(); ++s)
        for (int64_t j = 0; j < c.n_members(s); ++j) ++seen[static_cast<size_t>(c.member(s, j))];
      REQUIRE(std::all_of(seen.begin(), seen.end(), [](int x) { return x == 1; }));
    }
  }
}
