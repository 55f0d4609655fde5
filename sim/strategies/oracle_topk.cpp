// oracle_topk (protocol C, sim/strategies/STRATEGIES.md): the upper bound every query-aware
// selector is compared with. Nothing is evicted; at every decode step each query head reads the
// `budget` slots with the highest scaled logits q_t·k̂_s/√D + b_s over the cache as held (exact keys
// without a codec), ties to the lower position (keep_before). It keeps no metadata: a real system
// cannot compute these scores without reading every key, so its read_bytes counts only the slots
// it attends over (the bound on what a perfect selector would load). With budget >= t + 1 every
// slot is read and the result equals `full` exactly.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {
class OracleTopkState final : public StrategyState {
 public:
  OracleTopkState(int64_t B, int64_t D) : B_(B), D_(D) {}
  void prefill(std::span<SlotCache>, const LayerView&, int64_t) override {}  // keeps every token
  void evict(std::span<SlotCache>, int64_t) override {}
  void select(const SlotCache& cache, int64_t, const float* q, int64_t q_stride, int64_t,
              std::span<Selection> sel) override {
    const int64_t n = cache.size();
    const double scale = 1.0 / std::sqrt(static_cast<double>(D_));
    z_.resize(static_cast<size_t>(n));
    for (size_t g = 0; g < sel.size(); ++g) {
      const float* qg = q + static_cast<int64_t>(g) * q_stride;
      for (int64_t s = 0; s < n; ++s) {
        double d = 0;
        for (int64_t x = 0; x < D_; ++x) d += static_cast<double>(qg[x]) * cache.key(s)[x];
        z_[s] = d * scale + cache.bias(s);
      }
      sel[g].clear();
      std::vector<int32_t>& out = sel[g].slots;
      out.resize(static_cast<size_t>(n));
      std::iota(out.begin(), out.end(), 0);
      const int64_t k = std::min(B_, n);
      auto better = [&](int32_t a, int32_t b) { return keep_before(z_[a], cache.pos(a), z_[b], cache.pos(b)); };
      std::partial_sort(out.begin(), out.begin() + k, out.end(), better);
      out.resize(static_cast<size_t>(k));
      std::sort(out.begin(), out.end());  // slot order: with every slot read, attention is full's exactly
    }
  }

 private:
  int64_t B_, D_;
  std::vector<double> z_;
};

class OracleTopk final : public Strategy {
 public:
  explicit OracleTopk(ParamReader& p) {
    ep_.read(p, {.sinks = {}, .recent = {}, .gqa = false});
    set_identity(p);
  }
  bool is_selector() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    return std::make_unique<OracleTopkState>(ep_.resolve_budget(ctx.T, ctx.P), ctx.D);
  }

 private:
  EvictionParams ep_;
};
}  // namespace

std::unique_ptr<Strategy> make_oracle_topk(ParamReader& p) { return std::make_unique<OracleTopk>(p); }

}  // namespace kvsim
