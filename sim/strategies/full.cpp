// full: keeps every token. The control: every metric is exact (out_cos = 1, kl ~ 0).
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {
class FullState final : public StrategyState {
 public:
  void prefill(std::span<SlotCache>, const LayerView&, int64_t) override {}
  void evict(std::span<SlotCache>, int64_t) override {}
  // Keeping every token is the point of full, not a degeneracy.
  std::vector<std::string> degeneracies(const SlotCache&, int64_t) const override { return {}; }
};

class Full final : public Strategy {
 public:
  explicit Full(ParamReader& p) { set_identity(p); }
  std::unique_ptr<StrategyState> make_state(const InstanceContext&) const override {
    return std::make_unique<FullState>();
  }
};
}  // namespace

std::unique_ptr<Strategy> make_full(ParamReader& p) { return std::make_unique<Full>(p); }

}  // namespace kvsim
