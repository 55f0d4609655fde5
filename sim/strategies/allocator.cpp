#include "sim/strategies/allocator.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "sim/base/error.h"
#include "sim/strategies/evict.h"

namespace kvsim {

namespace {
const std::vector<std::pair<std::string, WrapperFactory>>& wrappers() {
  static const std::vector<std::pair<std::string, WrapperFactory>> w = {{"adakv", make_adakv},
                                                                        {"chunkkv", make_chunkkv},
                                                                        {"criticalkv", make_criticalkv},
                                                                        {"headkv", make_headkv_wrapper}};
  return w;
}
}  // namespace

WrapperFactory find_wrapper(const std::string& name) {
  for (const auto& [n, f] : wrappers())
    if (n == name) return f;
  return nullptr;
}

std::vector<std::string> allocator_names() {
  std::vector<std::string> out;
  for (const auto& w : wrappers()) out.push_back(w.first);
  return out;
}

std::vector<int32_t> rank_positions(const PromptScores& ps) {
  std::vector<int32_t> order(ps.score.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    if (ps.forced[a] != ps.forced[b]) return ps.forced[a] > ps.forced[b];
    return keep_before(ps.score[a], a, ps.score[b], b);
  });
  return order;
}

void AllocatorState::prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) {
  const size_t n_heads = caches.size();
  KVSIM_ASSERT(n_heads == base_.size());
  std::vector<PromptScores> ps(n_heads);
  bool cut = false;
  for (size_t h = 0; h < n_heads; ++h) {
    base_[h]->prompt_scores(caches[h], lv, P, ps[h]);
    KVSIM_ASSERT(ps[h].score.size() == static_cast<size_t>(P) && ps[h].forced.size() == static_cast<size_t>(P));
    cut = cut || ps[h].keep < P;
  }
  kept_.assign(n_heads, std::vector<uint8_t>(static_cast<size_t>(P), 1));
  budget_.assign(n_heads, 0);
  lv_ = &lv;
  if (cut) choose(ps, P, kept_);
  lv_ = nullptr;
  for (size_t h = 0; h < n_heads; ++h) {
    SlotCache& c = caches[h];
    std::vector<uint8_t> k(static_cast<size_t>(c.size()));
    for (int64_t s = 0; s < c.size(); ++s) k[s] = kept_[h][c.pos(s)];
    c.remove_unless(k);
    // The chosen tokens are permanent; the forced ones (a window, recent tokens) slide with the rest.
    for (int64_t i = 0; i < P; ++i) kept_[h][i] = kept_[h][i] && !ps[h].forced[i];
    // A prompt that fits every head is kept whole, and each head slides with the base's budget.
    budget_[h] = cut ? c.size() : ps[h].keep;
  }
  varlen_ = std::adjacent_find(budget_.begin(), budget_.end(), std::not_equal_to<>()) != budget_.end();
}

void AllocatorState::evict(std::span<SlotCache> caches, int64_t t) {
  for (size_t h = 0; h < caches.size(); ++h) {
    SlotCache& c = caches[h];
    const std::vector<uint8_t>& kept = kept_[h];
    const auto P = static_cast<int32_t>(kept.size());
    // Chosen prompt tokens are permanent; among the others the oldest goes first.
    evict_lowest(c, budget_[h], t, 0, 0,
                 [&](int64_t s) { return c.pos(s) < P && kept[c.pos(s)] ? INFINITY : double(c.pos(s)); });
  }
}

Allocator::Allocator(const std::string& wrapper, std::unique_ptr<Strategy> base) : base_(std::move(base)) {
  const std::string& t = base_->spec_text();
  const std::string why = base_->is_selector()      ? " is a selector (protocol sparse): it keeps no cache to cut"
                          : base_->layer_coupled()  ? " scores a whole layer at once, not each KV head"
                          : base_->per_query_head() ? " with gqa=none keeps one cache per query head, not per KV head"
                          : !base_->exposes_prompt_scores() ? " exposes no per-token scores comparable across heads"
                                                            : "";
  if (!why.empty())
    throw UsageError("strategy '" + t + "': " + wrapper + " wraps a scorer, and " +
                     base_->name().substr(wrapper.size() + 1) + why +
                     " (scorers: snapkv, pyramidkv, h2o, keydiff, lagkv, expected_attention)");
}

std::unique_ptr<StrategyState> Allocator::make_state(const InstanceContext& ctx) const {
  std::vector<std::unique_ptr<StrategyState>> base;
  for (int64_t kv = 0; kv < ctx.n_caches; ++kv) {
    InstanceContext one = ctx;
    one.kv0 = ctx.kv0 + kv, one.q0 = one.kv0 * ctx.G, one.n_caches = 1;
    base.push_back(base_->make_state(one));
  }
  return make_allocator(std::move(base), ctx);
}

}  // namespace kvsim
