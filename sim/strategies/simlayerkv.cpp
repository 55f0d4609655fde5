// simlayerkv (Zhang et al., "SimLayerKV: A Simple Framework for Layer-Level KV Cache Reduction",
// arXiv 2410.13846; reference code kvpress `simlayerkv_press.py`). A layer is "lazy" when its last
// prompt query, averaged over the layer's H query heads, puts more than `delta` of its attention on
// the first `initial` and the last `recent` prompt tokens: a[0 .. initial) + a[P − recent .. P) > delta.
// A lazy layer keeps only the first `initial` and the newest `recent` − 1 tokens (the reference keeps
// recent − n_last with n_last = 1 query); every other layer keeps everything. The decision is made
// once, at prefill, the same for every KV head of the layer; a prompt of P ≤ initial + recent + 1
// tokens, or delta ≥ 1, compresses nothing. Under protocol prefill the lazy layers cut the prompt and
// then grow; under protocol evict they slide (StreamingLLM with initial + recent − 1 slots). There is
// no budget: the memory saved is an output (the share of lazy layers). No state beyond the flag.
#include <vector>

#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

class SimlayerkvState final : public StrategyState {
 public:
  SimlayerkvState(int64_t initial, int64_t recent, double delta, int64_t G)
      : initial_(initial), recent_(recent), delta_(delta), G_(G) {}

  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override {
    lazy_ = false;
    if (P <= initial_ + recent_ + 1 || delta_ >= 1) return;
    std::vector<float> row;
    double mass = 0;
    for (int64_t kv = 0; kv < lv.Hkv; ++kv) {
      prompt_attention_rows(lv, {kv, kv * G_, G_}, P, P - 1, P, Gqa::sum, row);
      for (int64_t i = 0; i < P; ++i)
        if (i < initial_ || i >= P - recent_) mass += row[i] / static_cast<double>(lv.H);
    }
    lazy_ = mass > delta_;
    evict(caches, P - 1);
  }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    if (!lazy_) return;
    SlotCache& c = caches[0];
    // The oldest token past the initial ones goes first.
    evict_lowest(c, initial_ + recent_ - 1, t, initial_, 0, [&](int64_t s) { return double(c.pos(s)); });
  }
  std::vector<std::string> degeneracies(const SlotCache& cache, int64_t c) const override {
    if (!lazy_) return {};  // a layer that is not lazy keeps everything by design
    return StrategyState::degeneracies(cache, c);
  }

 private:
  int64_t initial_, recent_;
  double delta_;
  int64_t G_;
  bool lazy_ = false;
};

class Simlayerkv final : public Strategy {
 public:
  explicit Simlayerkv(ParamReader& p) {
    initial_ = p.get_int("initial", 4);
    recent_ = p.get_int("recent", 1024, IntRange{1, kMaxIntParam});
    delta_ = p.get_double("delta", 0.9);
    if (!(delta_ >= 0 && delta_ <= 1))
      throw UsageError("strategy '" + p.spec().text + "': delta=" + p.resolved().at("delta") + " must be in [0, 1]");
    set_identity(p);
  }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    return std::make_unique<SimlayerkvState>(initial_, recent_, delta_, ctx.G);
  }

 private:
  int64_t initial_ = 4, recent_ = 1024;
  double delta_ = 0.9;
};

}  // namespace

std::unique_ptr<Strategy> make_simlayerkv(ParamReader& p) { return std::make_unique<Simlayerkv>(p); }

}  // namespace kvsim
