// criticalkv (Feng et al., "Identify Critical KV Cache in LLM Inference from an Output Perturbation
// Perspective", arXiv 2502.03805; reference code kvpress `presses/criticalkv_press.py`, CriticalKVPress
// and CriticalAdaKVPress). A wrapper (sim/strategies/allocator.h) around a scorer that reweights its
// scores by how much each value moves the layer's output: n̄_i = the mean over the G query heads of
// the KV head of ‖W_o,g v_i‖₁, the trace's `vo_norm` (kvsim record --record vo_norm). Per KV head,
// with n_kept the base's budget (its forced tokens included):
//   1. stage 1: keep the top int(n_kept · first) prompt tokens by the base's score s (forced first);
//   2. stage 2: rescore the others s'_i = (s_i + eps) · n̄_i and keep the best until n_kept.
// heads=adakv (CriticalAdaKV): the head budgets of AdaKV's kvpress form first (each head's top
// int(n_kept · alpha) and its forced tokens kept, the layer's Hkv·(P − n_kept) lowest other scores
// dropped: B_h per head), then stages 1 and 2 inside each head with B_h for n_kept. Ties: the higher
// score, then the lower position (then the lower head when pooling). eps = 1e-4, first = 0.5.
#include <algorithm>
#include <cmath>

#include "sim/strategies/allocator.h"
#include "sim/strategies/evict.h"

namespace kvsim {

namespace {

struct Options {
  double eps = 1e-4, first = 0.5, alpha = 0.2;
  bool adaptive = false;
};

class CriticalState final : public AllocatorState {
 public:
  CriticalState(std::vector<std::unique_ptr<StrategyState>> base, const Options& o, int64_t kv0, int64_t G)
      : AllocatorState(std::move(base)), o_(o), kv0_(kv0), G_(G) {}

 protected:
  void choose(std::vector<PromptScores>& ps, int64_t P, std::vector<std::vector<uint8_t>>& keep) override {
    const LayerView& lv = view();
    KVSIM_ASSERT(lv.vo_norm != nullptr);
    const auto H = static_cast<int64_t>(ps.size());
    const int64_t n_kept = std::min(ps[0].keep, P);
    std::vector<std::vector<int32_t>> order(static_cast<size_t>(H));
    for (int64_t h = 0; h < H; ++h) order[h] = rank_positions(ps[h]);
    std::vector<int64_t> budget(static_cast<size_t>(H), n_kept);
    const auto n_safe = static_cast<int64_t>(static_cast<double>(n_kept) * o_.alpha);
    if (o_.adaptive) {  // B_h = how many tokens AdaKV's kvpress form keeps in head h
      adakv_kvpress_keep(ps, P, o_.alpha, keep);
      for (int64_t h = 0; h < H; ++h) budget[h] = std::count(keep[h].begin(), keep[h].end(), uint8_t{1});
    }
    for (int64_t h = 0; h < H; ++h) {
      std::fill(keep[h].begin(), keep[h].end(), 0);
      // Stage 1: the top int(B_h · first) by the base's order (under heads=adakv the safeguard is
      // on top of it already), and every forced token.
      int64_t n1 = static_cast<int64_t>(static_cast<double>(budget[h]) * o_.first);
      if (o_.adaptive) n1 = std::max(n1, n_safe);
      int64_t held = 0;
      for (int64_t r = 0; r < P; ++r) {
        const int32_t i = order[h][r];
        if (r < n1 || ps[h].forced[i]) keep[h][i] = 1, ++held;
      }
      // Stage 2: the rest by (s + eps) · mean over the group of ||W_o,g v_i||_1.
      const float* vo = lv.vo_norm + (kv0_ + h) * G_ * lv.T;
      std::vector<std::pair<double, int32_t>> rest;
      for (int32_t i = 0; i < P; ++i) {
        if (keep[h][i]) continue;
        double n = 0;
        for (int64_t g = 0; g < G_; ++g) n += vo[g * lv.T + i];
        rest.push_back({(ps[h].score[i] + o_.eps) * (n / static_cast<double>(G_)), i});
      }
      const int64_t more = std::clamp<int64_t>(budget[h] - held, 0, static_cast<int64_t>(rest.size()));
      std::partial_sort(rest.begin(), rest.begin() + more, rest.end(),
                        [](const auto& a, const auto& b) { return keep_before(a.first, a.second, b.first, b.second); });
      for (int64_t j = 0; j < more; ++j) keep[h][rest[j].second] = 1;
    }
  }

 private:
  Options o_;
  int64_t kv0_, G_;
};

class Criticalkv final : public Allocator {
 public:
  Criticalkv(ParamReader& p, std::unique_ptr<Strategy> base) : Allocator("criticalkv", std::move(base)) {
    const std::string& spec = p.spec().text;
    o_.eps = p.get_double("eps", 1e-4);
    o_.first = p.get_double("first", 0.5);
    o_.adaptive = p.get_choice("heads", {"uniform", "adakv"}) == "adakv";
    if (o_.adaptive) o_.alpha = p.get_double("alpha", 0.2);
    if (!(o_.eps >= 0 && std::isfinite(o_.eps)))
      throw UsageError("strategy '" + spec + "': eps=" + p.resolved().at("eps") + " must be finite and >= 0");
    if (!(o_.first >= 0 && o_.first <= 1))
      throw UsageError("strategy '" + spec + "': first=" + p.resolved().at("first") + " must be in [0, 1]");
    if (!(o_.alpha >= 0 && o_.alpha <= 1))
      throw UsageError("strategy '" + spec + "': alpha=" + p.resolved().at("alpha") + " must be in [0, 1]");
    finish_init(p);
  }
  bool needs_vo_norm() const override { return true; }

 protected:
  std::unique_ptr<AllocatorState> make_allocator(std::vector<std::unique_ptr<StrategyState>> base,
                                                 const InstanceContext& ctx) const override {
    return std::make_unique<CriticalState>(std::move(base), o_, ctx.kv0, ctx.G);
  }

 private:
  Options o_;
};

}  // namespace

std::unique_ptr<Strategy> make_criticalkv(ParamReader& p, std::unique_ptr<Strategy> base) {
  return std::make_unique<Criticalkv>(p, std::move(base));
}

}  // namespace kvsim
