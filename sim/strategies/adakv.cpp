// adakv (Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for
// Efficient LLM Inference", arXiv 2407.11550; reference code FFY0/AdaKV
// `adaptive_snapkv/monkeypatch/snapkv_utils.py` (AdaptiveSnapKVCluster), and kvpress
// `presses/adakv_press.py`). A budget allocator (sim/strategies/allocator.h) around a scorer: the
// KV heads of a layer share the layer's budget, a head whose scores are concentrated giving slots to
// one whose scores are spread. Each head keeps its base's forced tokens (SnapKV's window, sinks,
// recent) and a share of the candidates (the other prompt tokens). B' = the base's budget minus its
// forced tokens, n = the candidates per head.
//   form=original (the paper's code, default): pool the candidates' scores of all Hkv heads and take
//     the top Hkv·B'; c_h = how many of them head h has; capacity_h = round(c_h·(1 − alpha) +
//     int(B'·alpha)) (float32 arithmetic, round half to even, as torch computes it); head h keeps its
//     own top capacity_h candidates. The rounding can move the layer's total a few slots off Hkv·B'.
//   form=kvpress: n_kept = the base's budget; every head first keeps its top int(n_kept·alpha)
//     tokens (forced first); then the Hkv·(P − n_kept) lowest-scored other tokens of the layer go.
//     The layer holds exactly Hkv·n_kept.
// Ties: the higher score, then the lower position, then the lower head. alpha = 0.2 (the paper's
// experiments, AdaKV `pred.py --floor_alpha`; kvpress alpha_safeguard).
#include <algorithm>
#include <cmath>

#include "sim/strategies/allocator.h"
#include "sim/strategies/evict.h"

namespace kvsim {

namespace {

struct Cand {
  double score;
  int32_t pos, head;
};
// a before b in the layer-wide order: higher score, then lower position, then lower head.
bool cand_before(const Cand& a, const Cand& b) {
  if (a.score != b.score) return a.score > b.score;
  return a.pos != b.pos ? a.pos < b.pos : a.head < b.head;
}

}  // namespace

void adakv_kvpress_keep(const std::vector<PromptScores>& ps, int64_t P, double alpha,
                        std::vector<std::vector<uint8_t>>& keep) {
  const auto H = static_cast<int64_t>(ps.size());
  for (auto& k : keep) std::fill(k.begin(), k.end(), 0);
  std::vector<Cand> pool;
  const int64_t n_kept = std::min(ps[0].keep, P);
  const auto n_safe = static_cast<int64_t>(static_cast<double>(n_kept) * alpha);
  for (int64_t h = 0; h < H; ++h) {
    const std::vector<int32_t> order = rank_positions(ps[h]);
    for (int64_t r = 0; r < P; ++r) {
      const int32_t i = order[r];
      if (r < n_safe || ps[h].forced[i])
        keep[h][i] = 1;
      else
        pool.push_back({ps[h].score[i], i, static_cast<int32_t>(h)});
    }
  }
  // The Hkv·(P − n_kept) lowest of the rest go: the best pool.size() − that many stay.
  const int64_t stay = static_cast<int64_t>(pool.size()) - H * (P - n_kept);
  KVSIM_ASSERT(stay >= 0);
  std::nth_element(pool.begin(), pool.begin() + stay, pool.end(), cand_before);
  for (int64_t j = 0; j < stay; ++j) keep[pool[j].head][pool[j].pos] = 1;
}

namespace {

class AdakvState final : public AllocatorState {
 public:
  AdakvState(std::vector<std::unique_ptr<StrategyState>> base, double alpha, bool kvpress)
      : AllocatorState(std::move(base)), alpha_(alpha), kvpress_(kvpress) {}

 protected:
  void choose(std::vector<PromptScores>& ps, int64_t P, std::vector<std::vector<uint8_t>>& keep) override {
    if (kvpress_) return adakv_kvpress_keep(ps, P, alpha_, keep);
    const auto H = static_cast<int64_t>(ps.size());
    for (auto& k : keep) std::fill(k.begin(), k.end(), 0);
    std::vector<Cand> pool;
    int64_t n_forced = 0;
    for (int64_t i = 0; i < P; ++i) n_forced += ps[0].forced[i];
    const int64_t base = std::min(ps[0].keep, P) - n_forced;  // B'
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < P; ++i)
        if (ps[h].forced[i])
          keep[h][i] = 1;
        else
          pool.push_back({ps[h].score[i], static_cast<int32_t>(i), static_cast<int32_t>(h)});
    }
    const int64_t top = std::min<int64_t>(H * base, static_cast<int64_t>(pool.size()));
    std::nth_element(pool.begin(), pool.begin() + top, pool.end(), cand_before);
    std::vector<int64_t> count(static_cast<size_t>(H), 0);
    for (int64_t j = 0; j < top; ++j) ++count[pool[j].head];
    const auto floor_cap = static_cast<int64_t>(static_cast<double>(base) * alpha_);
    const auto one_minus = static_cast<float>(1.0 - alpha_);
    for (int64_t h = 0; h < H; ++h) {
      const float x = static_cast<float>(count[h]) * one_minus + static_cast<float>(floor_cap);
      const auto cap = static_cast<int64_t>(std::nearbyint(x));  // the default rounding mode: half to even
      const std::vector<int32_t> order = rank_positions(ps[h]);
      int64_t taken = 0;
      for (int32_t i : order)
        if (!ps[h].forced[i] && taken < cap) keep[h][i] = 1, ++taken;
    }
  }

 private:
  double alpha_;
  bool kvpress_;
};

class Adakv final : public Allocator {
 public:
  Adakv(ParamReader& p, std::unique_ptr<Strategy> base) : Allocator("adakv", std::move(base)) {
    alpha_ = p.get_double("alpha", 0.2);
    kvpress_ = p.get_choice("form", {"original", "kvpress"}) == "kvpress";
    if (!(alpha_ >= 0 && alpha_ <= 1))
      throw UsageError("strategy '" + p.spec().text + "': alpha=" + p.resolved().at("alpha") + " must be in [0, 1]");
    finish_init(p);
  }

 protected:
  std::unique_ptr<AllocatorState> make_allocator(std::vector<std::unique_ptr<StrategyState>> base,
                                                 const InstanceContext&) const override {
    return std::make_unique<AdakvState>(std::move(base), alpha_, kvpress_);
  }

 private:
  double alpha_ = 0.2;
  bool kvpress_ = false;
};

}  // namespace

std::unique_ptr<Strategy> make_adakv(ParamReader& p, std::unique_ptr<Strategy> base) {
  return std::make_unique<Adakv>(p, std::move(base));
}

}  // namespace kvsim
