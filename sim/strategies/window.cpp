// window: the newest B tokens (a sliding window; evicts the oldest).
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {
class WindowState final : public StrategyState {
 public:
  explicit WindowState(int64_t B) : B_(B) {}
  void prefill(std::span<SlotCache> caches, const LayerView&, int64_t P) override { evict(caches, P - 1); }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    for (auto& c : caches) evict_lowest(c, B_, t, 0, 0, [&c](int64_t s) { return double(c.pos(s)); });
  }

 private:
  int64_t B_;
};

class Window final : public Strategy {
 public:
  explicit Window(ParamReader& p) {
    ep_.read(p, {});
    set_identity(p);
  }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    return std::make_unique<WindowState>(ep_.resolve_budget(ctx.T, ctx.P));
  }

 private:
  EvictionParams ep_;
};
}  // namespace

std::unique_ptr<Strategy> make_window(ParamReader& p) { return std::make_unique<Window>(p); }

}  // namespace kvsim
