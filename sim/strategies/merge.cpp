#include "sim/strategies/merge.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace kvsim {

float normalized_entropy(float entropy_nats, int64_t i) {
  if (i <= 0) return 0.0f;
  return std::clamp(static_cast<float>(entropy_nats / std::log(static_cast<double>(i + 1))), 0.0f, 1.0f);
}

int64_t merged_tokens(const SlotCache& cache) {
  int64_t n = 0;
  for (int64_t s = 0; s < cache.size(); ++s)
    if (cache.n_members(s) > 1) n += cache.n_members(s);
  return n;
}

int64_t merge_adjacent_runs(SlotCache& cache, const MergeRule& rule, const float* h_norm, MergeState& st, int64_t t) {
  const int64_t n = cache.size(), D = cache.D();
  if (n < 2) return 0;
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cache.pos(a) < cache.pos(b); });
  auto mergeable = [&](int64_t s) {
    const int32_t first = cache.pos(s), last = cache.member(s, cache.n_members(s) - 1);
    if (first < rule.sinks || last > t - rule.recent) return false;
    return cache.n_members(s) > 1 || h_norm[first] >= rule.threshold;
  };

  std::vector<uint8_t> keep(static_cast<size_t>(n), 1);
  std::vector<double> k(static_cast<size_t>(D)), v(static_cast<size_t>(D));
  int64_t removed = 0;
  // Merges the slots order[a..b) into order[a].
  auto merge_piece = [&](size_t a, size_t b) {
    if (b - a < 2) return;
    const int64_t head = order[a];
    std::vector<int32_t> members;
    double W = 0, score = 0;
    std::fill(k.begin(), k.end(), 0.0);
    std::fill(v.begin(), v.end(), 0.0);
    for (size_t i = a; i < b; ++i) {
      const int64_t s = order[i];
      const int32_t p = cache.pos(s);
      const double w = st.weight[static_cast<size_t>(p)];
      for (int64_t d = 0; d < D; ++d) {
        k[static_cast<size_t>(d)] += w * cache.key(s)[d];
        v[static_cast<size_t>(d)] += w * cache.value(s)[d];
      }
      W += w;
      score += st.score[static_cast<size_t>(p)];
      for (int64_t j = 0; j < cache.n_members(s); ++j) members.push_back(cache.member(s, j));
      if (i > a) {
        keep[static_cast<size_t>(s)] = 0;
        ++removed;
      }
    }
    for (int64_t d = 0; d < D; ++d) {
      cache.key(head)[d] = static_cast<float>(k[static_cast<size_t>(d)] / W);
      cache.value(head)[d] = static_cast<float>(v[static_cast<size_t>(d)] / W);
    }
    std::sort(members.begin(), members.end());
    cache.set_members(head, members);
    cache.set_exact(head, false);
    cache.set_bias(head, rule.proportional ? static_cast<float>(std::log(static_cast<double>(members.size()))) : 0.0f);
    st.weight[static_cast<size_t>(members[0])] = W;
    st.score[static_cast<size_t>(members[0])] = score;
  };

  size_t i = 0;
  while (i < order.size()) {
    if (!mergeable(order[i])) {
      ++i;
      continue;
    }
    // A maximal run [i, j) of mergeable slots, cut greedily into pieces of <= max_span members.
    size_t j = i;
    while (j < order.size() && mergeable(order[j])) ++j;
    size_t a = i;
    int64_t span = 0;
    for (size_t x = i; x < j; ++x) {
      const int64_t m = cache.n_members(order[x]);
      if (span > 0 && span + m > rule.max_span) {
        merge_piece(a, x);
        a = x;
        span = 0;
      }
      span += m;
    }
    merge_piece(a, j);
    i = j;
  }
  if (removed) cache.remove_unless(keep);
  return removed;
}

}  // namespace kvsim
