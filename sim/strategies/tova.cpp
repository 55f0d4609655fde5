// tova (Token Omission Via Attention, Oren et al., arXiv 2401.06104). Layer-coupled: one instance
// manages the Hkv caches of a layer, which always hold the same positions. State: this step's
// attention per token, averaged over all H query heads of the layer. Rule: while over budget, drop
// the token with the lowest current attention from every KV head; the newest token is kept (and
// `sinks`/`recent`, default 0, are protected). Prefill: the prompt's last query ranks the prompt
// (dropping the lowest one at a time by one fixed row is the same as dropping them at once).
#include <cmath>
#include <vector>

#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {
class TovaState final : public StrategyState {
 public:
  TovaState(int64_t B, int64_t sinks, int64_t recent, int64_t T, int64_t G)
      : B_(B), sinks_(sinks), recent_(std::max<int64_t>(1, recent)), G_(G), cur_(T, 0.0) {}

  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override {
    std::fill(cur_.begin(), cur_.end(), 0.0);
    std::vector<float> row;
    for (int64_t kv = 0; kv < lv.Hkv; ++kv) {
      prompt_attention_rows(lv, {kv, kv * G_, G_}, P, P - 1, P, Gqa::sum, row);
      for (int64_t i = 0; i < P; ++i) cur_[i] += row[i] / static_cast<double>(lv.H);
    }
    evict(caches, P - 1);
  }
  void observe(std::span<const SlotCache> caches, std::span<const float* const> attn, int64_t) override {
    const int64_t n_heads = static_cast<int64_t>(caches.size());
    const SlotCache& c0 = caches[0];
    for (int64_t s = 0; s < c0.size(); ++s) cur_[c0.pos(s)] = 0.0;
    int64_t H = 0;
    for (int64_t c = 0; c < n_heads; ++c) {
      const SlotCache& cc = caches[c];
      const int64_t n = cc.size();
      for (int64_t s = 0; s < n; ++s)
        for (int64_t g = 0; g < G_; ++g) cur_[cc.pos(s)] += attn[c][g * n + s];
      H += G_;
    }
    for (int64_t s = 0; s < c0.size(); ++s) cur_[c0.pos(s)] /= static_cast<double>(H);
  }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    SlotCache& c0 = caches[0];
    while (c0.size() > B_) {
      int64_t worst = -1;
      for (int64_t s = 0; s < c0.size(); ++s) {
        int32_t p = c0.pos(s);
        if (is_protected(p, t, sinks_, recent_)) continue;
        if (worst < 0 || keep_before(cur_[c0.pos(worst)], c0.pos(worst), cur_[p], p)) worst = s;
      }
      if (worst < 0) break;
      const int32_t p = c0.pos(worst);
      for (auto& c : caches) {
        int64_t s = c.find(p);
        KVSIM_ASSERT(s >= 0);
        c.remove(s);
      }
    }
  }
  double state_bytes(int64_t) const override { return 0; }  // one row of current attention, transient

 private:
  int64_t B_, sinks_, recent_, G_;
  std::vector<double> cur_;
};

class Tova final : public Strategy {
 public:
  explicit Tova(ParamReader& p) {
    ep_.read(p, {.sinks = 0, .recent = 0, .gqa = false});
    set_identity(p);
  }
  bool layer_coupled() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    int64_t B = ep_.resolve_budget(ctx.T, ctx.P);
    return std::make_unique<TovaState>(B, ep_.sinks, ep_.resolve_recent(B), ctx.T, ctx.G);
  }

 private:
  EvictionParams ep_;
};
}  // namespace

std::unique_ptr<Strategy> make_tova(ParamReader& p) { return std::make_unique<Tova>(p); }

}  // namespace kvsim
