// streaming (StreamingLLM, Xiao et al., arXiv 2309.17453): `sinks` first tokens (default 4, the
// attention sinks) plus the newest B - sinks. Variant prefix=1: a prefix block of `block` tokens
// (default B/2) is protected instead of the 4 sinks.
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {
class StreamingState final : public StrategyState {
 public:
  StreamingState(int64_t B, int64_t protect) : B_(B), protect_(protect) {}
  void prefill(std::span<SlotCache> caches, const LayerView&, int64_t P) override { evict(caches, P - 1); }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    for (auto& c : caches) evict_lowest(c, B_, t, protect_, 0, [&c](int64_t s) { return double(c.pos(s)); });
  }

 private:
  int64_t B_, protect_;
};

class Streaming final : public Strategy {
 public:
  explicit Streaming(ParamReader& p) {
    prefix_ = p.get_flag("prefix", false);
    if (prefix_) {
      block_ = p.get_int("block", -1, IntRange{-1, kMaxIntParam});  // -1: budget/2
      if (block_ == -1) p.set_resolved("block", "budget/2");
      ep_.read(p, {});
      if (block_ == 0 || block_ < -1) throw UsageError("strategy '" + p.spec().text + "': block must be > 0");
    } else {
      ep_.read(p, {.sinks = 4, .recent = {}, .gqa = false});
    }
    set_identity(p);
  }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    EvictionParams e = ep_;
    if (prefix_) e.sinks = block_ > 0 ? block_ : e.resolve_budget(ctx.T, ctx.P) / 2;
    int64_t B = e.resolve_budget(ctx.T, ctx.P);
    return std::make_unique<StreamingState>(B, e.sinks);
  }

 private:
  EvictionParams ep_;
  bool prefix_ = false;
  int64_t block_ = -1;
};
}  // namespace

std::unique_ptr<Strategy> make_streaming(ParamReader& p) { return std::make_unique<Streaming>(p); }

}  // namespace kvsim
