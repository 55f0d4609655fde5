// scissorhands (Liu et al., arXiv 2305.17118), "persistence of importance". State: per token, the
// count of steps within the last `history` steps (default 400) in which its attention (combined
// over the G query heads by `gqa`) exceeded 1/n, n the number of slots attended at that step.
// Rule: when the cache is over budget, drop the m = `drop`·B least important tokens at once
// (drop default 0.4; at least enough to meet the budget), never the `recent` newest (default 10)
// or the `sinks` first (default 0). Prefill counts the last min(history, P) prompt queries.
#include <cmath>
#include <deque>
#include <vector>

#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {
class ScissorhandsState final : public StrategyState {
 public:
  ScissorhandsState(int64_t B, int64_t sinks, int64_t recent, int64_t history, int64_t m, Gqa gqa, int64_t T, int64_t G,
                    int64_t kv)
      : B_(B), sinks_(sinks), recent_(recent), history_(history), m_(m), gqa_(gqa), count_(T, 0), G_(G), kv_(kv) {}

  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override {
    const int64_t j0 = std::max<int64_t>(0, P - history_);
    std::vector<float> rows;
    prompt_attention_rows(lv, {kv_, kv_ * G_, G_}, P, j0, P, gqa_, rows);
    for (int64_t j = j0; j < P; ++j) {
      std::vector<int32_t> hit;
      const float thr = 1.0f / static_cast<float>(j + 1);
      for (int64_t i = 0; i <= j; ++i)
        if (rows[(j - j0) * P + i] > thr) hit.push_back(static_cast<int32_t>(i));
      push_row(std::move(hit));
    }
    evict(caches, P - 1);
  }
  void observe(std::span<const SlotCache> caches, std::span<const float* const> attn, int64_t) override {
    const SlotCache& c = caches[0];
    const int64_t n = c.size();
    tmp_.resize(n);
    combine_gqa(attn[0], G_, n, gqa_, tmp_.data());
    const float thr = 1.0f / static_cast<float>(n);
    std::vector<int32_t> hit;
    for (int64_t s = 0; s < n; ++s)
      if (tmp_[s] > thr) hit.push_back(c.pos(s));
    push_row(std::move(hit));
  }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    SlotCache& c = caches[0];
    if (c.size() <= B_) return;
    evict_lowest(
        c, B_, t, sinks_, recent_, [&](int64_t s) { return double(count_[c.pos(s)]); }, m_);
  }
  double state_bytes(int64_t) const override { return 4.0 * static_cast<double>(B_ + 1); }

 private:
  // One step's hits enter the window; the step that falls out of it is forgotten.
  void push_row(std::vector<int32_t> hit) {
    for (int32_t p : hit) ++count_[p];
    rows_.push_back(std::move(hit));
    if (static_cast<int64_t>(rows_.size()) > history_) {
      for (int32_t p : rows_.front()) --count_[p];
      rows_.pop_front();
    }
  }
  int64_t B_, sinks_, recent_, history_, m_;
  Gqa gqa_;
  std::vector<int32_t> count_;
  std::deque<std::vector<int32_t>> rows_;
  std::vector<float> tmp_;
  int64_t G_, kv_;
};

class Scissorhands final : public Strategy {
 public:
  explicit Scissorhands(ParamReader& p) {
    ep_.read(p, {.sinks = 0, .recent = 10, .gqa = true});
    history_ = p.get_int("history", 400);
    drop_ = p.get_double("drop", 0.4);
    if (history_ <= 0) throw UsageError("strategy '" + p.spec().text + "': history must be > 0");
    if (!(drop_ > 0 && drop_ < 1)) throw UsageError("strategy '" + p.spec().text + "': drop must be in (0, 1)");
    set_identity(p);
  }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    int64_t B = ep_.resolve_budget(ctx.T, ctx.P);
    int64_t m = std::max<int64_t>(1, std::llround(drop_ * static_cast<double>(B)));
    return std::make_unique<ScissorhandsState>(B, ep_.sinks, ep_.resolve_recent(B), history_, m, ep_.gqa, ctx.T, ctx.G,
                                               ctx.kv0);
  }

 private:
  EvictionParams ep_;
  int64_t history_ = 400;
  double drop_ = 0.4;
};
}  // namespace

std::unique_ptr<Strategy> make_scissorhands(ParamReader& p) { return std::make_unique<Scissorhands>(p); }

}  // namespace kvsim
