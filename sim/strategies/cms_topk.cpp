// cms_topk: H2O (arXiv 2306.14048) with the accumulated attention of every token kept in a
// Count-Min Sketch (conservative update, sim/strategies/cms.h) instead of exact per-token counters. State:
// the d x w sketch. Rule: as h2o — keep the `sinks` first and `recent` newest tokens, fill the rest
// with the top tokens by the sketch's estimate (which never under-counts). The sketch's memory
// (d x w fp32 counters + hash parameters) is counted in `bytes`. Defaults: width 256, depth 4,
// sinks 0, recent B/2, gqa mean, seed 0.
#include "sim/base/error.h"
#include "sim/strategies/cms.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

class CmsTopkState final : public StrategyState {
 public:
  CmsTopkState(int64_t B, int64_t sinks, int64_t recent, Gqa gqa, int64_t width, int64_t depth, uint64_t seed,
               const InstanceContext& ctx)
      : B_(B), sinks_(sinks), recent_(recent), gqa_(gqa), kv_(ctx.kv0), G_(ctx.G),
        sketch_(width, depth, seed ^ (static_cast<uint64_t>(ctx.layer) << 32) ^ static_cast<uint64_t>(ctx.kv0)),
        tmp_(static_cast<size_t>(ctx.T)) {}

  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override {
    KVSIM_ASSERT(lv.prompt_colsums != nullptr);
    combined_prompt_colsums(lv, {kv_, kv_ * G_, G_}, P, gqa_, tmp_.data());
    for (int64_t i = 0; i < P; ++i) sketch_.add(i, tmp_[static_cast<size_t>(i)]);
    evict(caches, P - 1);
  }
  void observe(std::span<const SlotCache> caches, std::span<const float* const> attn, int64_t) override {
    const SlotCache& c = caches[0];
    combine_gqa(attn[0], G_, c.size(), gqa_, tmp_.data());
    for (int64_t s = 0; s < c.size(); ++s) sketch_.add(c.pos(s), tmp_[static_cast<size_t>(s)]);
  }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    SlotCache& c = caches[0];
    evict_lowest(c, B_, t, sinks_, recent_, [&](int64_t s) { return static_cast<double>(sketch_.estimate(c.pos(s))); });
  }
  double state_bytes(int64_t) const override { return static_cast<double>(sketch_.bytes()); }

 private:
  int64_t B_, sinks_, recent_;
  Gqa gqa_;
  int64_t kv_, G_;
  CountMinSketch sketch_;
  std::vector<float> tmp_;
};

class CmsTopk final : public Strategy {
 public:
  explicit CmsTopk(ParamReader& p) {
    ep_.read(p, {.sinks = 0, .recent = -1, .gqa = true});
    width_ = p.get_int("width", 256, "sketch width w (counters per row)");
    depth_ = p.get_int("depth", 4, "sketch depth d (rows, independent hashes)");
    seed_ = p.get_seed("seed", "hash seed");
    CountMinSketch check(width_, depth_, 0);  // validates width and depth (one-line UsageError)
    set_identity(p);
  }
  bool needs_prompt_colsums() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    const int64_t B = ep_.resolve_budget(ctx.T, ctx.P);
    return std::make_unique<CmsTopkState>(B, ep_.sinks, ep_.resolve_recent(B), ep_.gqa, width_, depth_, seed_, ctx);
  }

 private:
  EvictionParams ep_;
  int64_t width_ = 256, depth_ = 4;
  uint64_t seed_ = 0;
};

}  // namespace

std::unique_ptr<Strategy> make_cms_topk(ParamReader& p) { return std::make_unique<CmsTopk>(p); }

}  // namespace kvsim
