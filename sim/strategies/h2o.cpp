// h2o (Heavy-Hitter Oracle, Zhang et al., arXiv 2306.14048). State: accumulated attention
// s_i = sum over steps of the token's attention (combined over the G query heads by `gqa`),
// starting from the prompt's own attention (column sums over the prompt queries). Rule: keep the
// `recent` newest tokens (default B/2) and the `sinks` first, fill the rest with the top s_i.
// norm=mean divides s_i by the number of queries that saw token i (removes the early-token bias).
#include <vector>

#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {
class H2oState final : public StrategyState {
 public:
  H2oState(int64_t B, int64_t sinks, int64_t recent, Gqa gqa, bool mean, int64_t T, const HeadGroup& grp)
      : B_(B), sinks_(sinks), recent_(recent), gqa_(gqa), mean_(mean), score_(T, 0.0), seen_(T, 0), tmp_(T), grp_(grp) {
  }

  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override {
    KVSIM_ASSERT(lv.prompt_colsums != nullptr);
    // The prompt's attention of the query heads of this cache (all G, or one under gqa=none).
    combined_prompt_colsums(lv, grp_, P, gqa_, tmp_.data());
    for (int64_t i = 0; i < P; ++i) {
      score_[i] = tmp_[i];
      seen_[i] = static_cast<int32_t>(P - i);
    }
    evict(caches, P - 1);
  }
  void prompt_scores(const SlotCache&, const LayerView& lv, int64_t P, PromptScores& out) override {
    KVSIM_ASSERT(lv.prompt_colsums != nullptr);
    combined_prompt_colsums(lv, grp_, P, gqa_, tmp_.data());
    out.score.assign(static_cast<size_t>(P), 0.0);
    out.forced.assign(static_cast<size_t>(P), 0);
    for (int64_t i = 0; i < P; ++i) {
      score_[i] = tmp_[i], seen_[i] = static_cast<int32_t>(P - i);
      out.score[i] = mean_ ? score_[i] / static_cast<double>(seen_[i]) : score_[i];
      out.forced[i] = is_protected(static_cast<int32_t>(i), P - 1, sinks_, recent_);
    }
    out.keep = B_;
  }
  void observe(std::span<const SlotCache> caches, std::span<const float* const> attn, int64_t) override {
    const SlotCache& c = caches[0];
    combine_gqa(attn[0], grp_.n, c.size(), gqa_, tmp_.data());
    for (int64_t s = 0; s < c.size(); ++s) {
      score_[c.pos(s)] += tmp_[s];
      seen_[c.pos(s)] += 1;
    }
  }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    SlotCache& c = caches[0];
    evict_lowest(c, B_, t, sinks_, recent_, [&](int64_t s) {
      int32_t p = c.pos(s);
      return mean_ ? score_[p] / std::max<int32_t>(1, seen_[p]) : score_[p];
    });
  }
  double state_bytes(int64_t) const override { return (mean_ ? 8.0 : 4.0) * static_cast<double>(B_ + 1); }

 private:
  int64_t B_, sinks_, recent_;
  Gqa gqa_;
  bool mean_;
  std::vector<double> score_;
  std::vector<int32_t> seen_;
  std::vector<float> tmp_;
  HeadGroup grp_;
};

class H2o final : public Strategy {
 public:
  explicit H2o(ParamReader& p) {
    ep_.read(p, {.sinks = 0, .recent = -1, .gqa = true, .gqa_none = true});
    mean_ = p.get_choice("norm", {"sum", "mean"}) == "mean";
    set_identity(p);
  }
  bool needs_prompt_colsums() const override { return true; }
  bool per_query_head() const override { return ep_.gqa == Gqa::none; }
  bool exposes_prompt_scores() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    int64_t B = ep_.resolve_budget(ctx.T, ctx.P);
    return std::make_unique<H2oState>(B, ep_.sinks, ep_.resolve_recent(B), ep_.gqa, mean_, ctx.T, ctx.group());
  }

 private:
  EvictionParams ep_;
  bool mean_ = false;
};
}  // namespace

std::unique_ptr<Strategy> make_h2o(ParamReader& p) { return std::make_unique<H2o>(p); }

}  // namespace kvsim
