// random: evicts a uniformly random slot outside `sinks` and `recent` (both default 0) whenever the
// cache is over budget. A baseline; `seed` (default 0) and the (layer, KV head) fix the stream.
#include "sim/base/splitmix.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {
class RandomState final : public StrategyState {
 public:
  RandomState(int64_t B, int64_t sinks, int64_t recent, uint64_t seed)
      : B_(B), sinks_(sinks), recent_(recent), rng_(seed) {}
  void prefill(std::span<SlotCache> caches, const LayerView&, int64_t P) override { evict(caches, P - 1); }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    SlotCache& c = caches[0];
    // A fresh random score per slot and eviction: the lowest are a uniform random subset.
    std::vector<double> r(c.size());
    for (auto& x : r) x = static_cast<double>(splitmix64(rng_) >> 11);
    evict_lowest(c, B_, t, sinks_, recent_, [&](int64_t s) { return r[s]; });
  }

 private:
  int64_t B_, sinks_, recent_;
  uint64_t rng_;
};

class Random final : public Strategy {
 public:
  explicit Random(ParamReader& p) {
    ep_.read(p, {.sinks = 0, .recent = 0, .gqa = false});
    seed_ = p.get_seed("seed");
    set_identity(p);
  }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    int64_t B = ep_.resolve_budget(ctx.T, ctx.P);
    uint64_t s = seed_ * 0x100000001b3ull ^ (static_cast<uint64_t>(ctx.layer) << 32) ^ static_cast<uint64_t>(ctx.kv0);
    splitmix64(s);
    return std::make_unique<RandomState>(B, ep_.sinks, ep_.resolve_recent(B), s);
  }

 private:
  EvictionParams ep_;
  uint64_t seed_ = 0;
};
}  // namespace

std::unique_ptr<Strategy> make_random(ParamReader& p) { return std::make_unique<Random>(p); }

}  // namespace kvsim
