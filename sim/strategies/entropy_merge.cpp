// entropy_merge: entropy-guided merging (design.md §5). State: per token its normalized attention
// entropy H_i = -sum_j P_ij log P_ij / log(i + 1) of its own query's exact attention row (combined
// over the G query heads by `gqa`), and H2O-style accumulated attention per slot. Rule, after
// prefill and at every step: merge each maximal run of adjacent mergeable tokens (H_i >= threshold,
// outside the sinks and the recent window) into one slot of at most max_span members, key and value
// the mean of its members (weights = uniform | attention), with proportional attention (bias log n)
// unless prop=0. Low-entropy tokens stay exact. When merging cannot meet the budget, the slots with
// the lowest accumulated attention are evicted; with budget=none nothing is evicted and the
// compression is whatever the threshold merges. weights=attention: an exact token weighs its
// accumulated attention now (floored at 1e-12), a merged slot the sum of its parts' weights when they
// merged (attention it draws afterwards raises its score, not its weight). Defaults: threshold 0.5,
// sinks 4, recent 8, max_span 16, weights uniform, prop 1, gqa mean.
#include <cmath>
#include <vector>

#include "sim/base/error.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/merge.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

class EntropyMergeState final : public StrategyState {
 public:
  EntropyMergeState(int64_t B, MergeRule rule, bool attention_weights, Gqa gqa, const InstanceContext& ctx)
      : B_(B), rule_(rule), attn_w_(attention_weights), gqa_(gqa), kv_(ctx.kv0), G_(ctx.G), T_(ctx.T) {
    st_.score.assign(static_cast<size_t>(T_), 0.0);
    st_.weight.assign(static_cast<size_t>(T_), 1.0);
    h_.assign(static_cast<size_t>(T_), 0.0f);
    tmp_.resize(static_cast<size_t>(T_));
    e_.resize(static_cast<size_t>(G_));
  }

  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override {
    KVSIM_ASSERT(lv.entropy != nullptr && lv.prompt_colsums != nullptr);
    // H_i is read when token i arrives (normalize_entropy_upto), not all at once here: inside the
    // live model runner (kvsim ppl) the entropy of a decode token exists only from its own step on.
    entropy_ = lv.entropy;
    h_done_ = 0;
    normalize_entropy_upto(P - 1);
    combined_prompt_colsums(lv, {kv_, kv_ * G_, G_}, P, gqa_, tmp_.data());
    for (int64_t i = 0; i < P; ++i) st_.score[static_cast<size_t>(i)] = tmp_[static_cast<size_t>(i)];
    evict(caches, P - 1);
  }

  void observe(std::span<const SlotCache> caches, std::span<const float* const> attn, int64_t) override {
    const SlotCache& c = caches[0];
    combine_gqa(attn[0], G_, c.size(), gqa_, tmp_.data());
    for (int64_t s = 0; s < c.size(); ++s) st_.score[static_cast<size_t>(c.pos(s))] += tmp_[static_cast<size_t>(s)];
  }

  void evict(std::span<SlotCache> caches, int64_t t) override {
    SlotCache& c = caches[0];
    normalize_entropy_upto(t);
    if (attn_w_) {
      // Exact slots weigh by their accumulated attention (floored so an all-zero run stays defined).
      for (int64_t s = 0; s < c.size(); ++s)
        if (c.n_members(s) == 1)
          st_.weight[static_cast<size_t>(c.pos(s))] = std::max(st_.score[static_cast<size_t>(c.pos(s))], 1e-12);
    }
    merge_adjacent_runs(c, rule_, h_.data(), st_, t);
    evict_lowest(c, B_, t, rule_.sinks, rule_.recent,
                 [&](int64_t s) { return st_.score[static_cast<size_t>(c.pos(s))]; });
    merged_slots_ = 0;
    for (int64_t s = 0; s < c.size(); ++s) merged_slots_ += c.n_members(s) > 1 ? 1 : 0;
    slots_ = static_cast<double>(c.size());
  }

  // Accumulated score per slot (fp32) and, per merged slot, its weight and member count. With
  // budget=none the scores rank nothing: they are held only as the weights of weights=attention,
  // for the slots held (and the next token).
  double state_bytes(int64_t) const override {
    if (B_ == EvictionParams::kNoBudget) return (attn_w_ ? 4.0 * (slots_ + 1) : 0.0) + 8.0 * merged_slots_;
    return 4.0 * static_cast<double>(B_ + 1) + 8.0 * merged_slots_;
  }
  // Once merging stops (protocol prefill), the member bookkeeping of merged slots stays.
  double frozen_state_bytes(int64_t) const override { return 8.0 * merged_slots_; }

 private:
  // h_[i] for i <= t: the normalized entropy per query head of this KV head, combined by gqa.
  void normalize_entropy_upto(int64_t t) {
    float* e = e_.data();
    for (; h_done_ <= t; ++h_done_) {
      const int64_t i = h_done_;
      for (int64_t g = 0; g < G_; ++g) e[g] = normalized_entropy(entropy_[(kv_ * G_ + g) * T_ + i], i);
      combine_gqa(e, G_, 1, gqa_, &h_[static_cast<size_t>(i)]);
      if (gqa_ == Gqa::sum)
        h_[static_cast<size_t>(i)] /= static_cast<float>(G_);  // compare the mean with the threshold
    }
  }

  int64_t B_;
  MergeRule rule_;
  bool attn_w_;
  Gqa gqa_;
  int64_t kv_, G_, T_;
  MergeState st_;
  const float* entropy_ = nullptr;  // [H, T] nats (LayerView::entropy), read up to the current step
  int64_t h_done_ = 0;              // h_[0 .. h_done_-1] are set
  std::vector<float> h_, tmp_, e_;
  double merged_slots_ = 0, slots_ = 0;
};

class EntropyMerge final : public Strategy {
 public:
  explicit EntropyMerge(ParamReader& p) {
    ep_.read(p, {.sinks = 4, .recent = 8, .gqa = true, .budget_none = true});
    rule_.sinks = ep_.sinks;
    rule_.recent = ep_.recent;
    rule_.threshold = p.get_double("threshold", 0.5, "normalized entropy at or above which a token is mergeable");
    if (!(rule_.threshold >= 0 && rule_.threshold <= 1))
      throw UsageError(spec_error("threshold", std::to_string(rule_.threshold), "must be in [0, 1]"));
    rule_.max_span = p.get_int("max_span", 16, IntRange{2, kMaxIntParam}, "members per merged slot at most");
    attn_w_ = p.get_choice("weights", {"uniform", "attention"}) == "attention";
    rule_.proportional = p.get_flag("prop", true, "proportional attention: bias log(n) on merged slots");
    set_identity(p);
  }
  bool needs_prompt_colsums() const override { return true; }
  bool needs_entropy() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    return std::make_unique<EntropyMergeState>(ep_.resolve_budget(ctx.T, ctx.P), rule_, attn_w_, ep_.gqa, ctx);
  }

 private:
  static std::string spec_error(const std::string& key, const std::string& v, const std::string& why) {
    return "entropy_merge: " + key + "=" + v + " " + why;
  }
  EvictionParams ep_;
  MergeRule rule_;
  bool attn_w_ = false;
};

}  // namespace

std::unique_ptr<Strategy> make_entropy_merge(ParamReader& p) { return std::make_unique<EntropyMerge>(p); }

}  // namespace kvsim
