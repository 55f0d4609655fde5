// knorm (Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression",
// arXiv 2406.11430): keys with a small L2 norm draw high attention, so keep the keys with the
// smallest norm (evict the largest), outside `sinks` and `recent` (both default 0).
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {
class KnormState final : public StrategyState {
 public:
  KnormState(int64_t B, int64_t sinks, int64_t recent, int64_t kv) : B_(B), sinks_(sinks), recent_(recent), kv_(kv) {}
  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override {
    norm_ = lv.k_norm + kv_ * lv.T;
    evict(caches, P - 1);
  }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    SlotCache& c = caches[0];
    evict_lowest(c, B_, t, sinks_, recent_, [&](int64_t s) { return -double(norm_[c.pos(s)]); });
  }

 private:
  int64_t B_, sinks_, recent_, kv_;
  const float* norm_ = nullptr;  // [T] norms of this KV head's keys (the norm is recomputable from the key)
};

class Knorm final : public Strategy {
 public:
  explicit Knorm(ParamReader& p) {
    ep_.read(p, {.sinks = 0, .recent = 0, .gqa = false});
    set_identity(p);
  }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    int64_t B = ep_.resolve_budget(ctx.T, ctx.P);
    return std::make_unique<KnormState>(B, ep_.sinks, ep_.resolve_recent(B), ctx.kv0);
  }

 private:
  EvictionParams ep_;
};
}  // namespace

std::unique_ptr<Strategy> make_knorm(ParamReader& p) { return std::make_unique<Knorm>(p); }

}  // namespace kvsim
