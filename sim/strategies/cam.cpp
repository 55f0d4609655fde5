// cam (CaM: Cache Merging for Memory-efficient LLMs Inference, Zhang et al., ICML 2024). State:
// H2O-style accumulated attention per token and a seeded random stream. Rule: choose the token to
// evict as h2o does (lowest accumulated attention outside the sinks and the recent window); before
// it goes, with Bernoulli probability p = clamp(A_e / mean A_window, 0, 1), add v_e / m to the
// values of the next m kept tokens after it (v_e / r when only r < m kept tokens follow it) (A: accumulated attention;
// the window: those m tokens). Keys are untouched. Defaults: m 4, sinks 0, recent B/2, gqa mean, seed 0.
#include <algorithm>
#include <numeric>
#include <random>

#include "sim/base/error.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

class CamState final : public StrategyState {
 public:
  CamState(int64_t B, int64_t sinks, int64_t recent, Gqa gqa, int64_t m, uint64_t seed, const InstanceContext& ctx)
      : B_(B), sinks_(sinks), recent_(recent), m_(m),
        rng_(seed ^ (static_cast<uint64_t>(ctx.layer) << 32) ^ static_cast<uint64_t>(ctx.kv0)),
        score_(ctx.T, ctx.group(), gqa) {}

  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override {
    score_.start(lv, P);
    evict(caches, P - 1);
  }
  void observe(std::span<const SlotCache> caches, std::span<const float* const> attn, int64_t) override {
    score_.add(caches[0], attn[0]);
  }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    SlotCache& c = caches[0];
    while (c.size() > B_) {
      // The victim: lowest score, ties to the higher position (keep_before keeps the lower one).
      int64_t victim = -1;
      for (int64_t s = 0; s < c.size(); ++s) {
        const int32_t p = c.pos(s);
        if (is_protected(p, t, sinks_, recent_)) continue;
        if (victim < 0 || keep_before(score_[c.pos(victim)], c.pos(victim), score_[p], p)) victim = s;
      }
      if (victim < 0) return;  // everything is protected
      merge_into_next(c, victim);
      c.remove(victim);
    }
  }

 private:
  // Adds v_victim / m to the m kept slots that follow it in position order, with probability p.
  void merge_into_next(SlotCache& c, int64_t victim) {
    const int32_t pv = c.pos(victim);
    std::vector<int64_t> next;
    for (int64_t s = 0; s < c.size(); ++s)
      if (c.pos(s) > pv) next.push_back(s);
    std::sort(next.begin(), next.end(), [&](int64_t a, int64_t b) { return c.pos(a) < c.pos(b); });
    if (next.size() > static_cast<size_t>(m_)) next.resize(static_cast<size_t>(m_));
    if (next.empty()) return;
    double mean_a = 0;
    for (int64_t s : next) mean_a += score_[c.pos(s)];
    mean_a /= static_cast<double>(next.size());
    const double a_e = score_[pv];
    const double p = mean_a > 0 ? std::clamp(a_e / mean_a, 0.0, 1.0) : 1.0;
    if (std::uniform_real_distribution<double>(0.0, 1.0)(rng_) >= p) return;
    // Split over the receivers (fewer than m when the victim is near the newest tokens) so that
    // the whole v_e is kept.
    const float inv_m = 1.0f / static_cast<float>(next.size());
    for (int64_t s : next) {
      for (int64_t d = 0; d < c.D(); ++d) c.value(s)[d] += c.value(victim)[d] * inv_m;
      c.set_exact(s, false);
    }
  }

  int64_t B_, sinks_, recent_, m_;
  std::mt19937_64 rng_;
  AccumulatedAttention score_;

 public:
  double state_bytes(int64_t) const override { return 4.0 * static_cast<double>(B_ + 1); }
};

class Cam final : public Strategy {
 public:
  explicit Cam(ParamReader& p) {
    ep_.read(p, {.sinks = 0, .recent = -1, .gqa = true});
    m_ = p.get_int("m", 4, IntRange{1, kMaxIntParam}, "kept tokens after an evicted one that receive its value / m");
    seed_ = p.get_seed("seed", "seed of the Bernoulli draws");
    set_identity(p);
  }
  bool needs_prompt_colsums() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    const int64_t B = ep_.resolve_budget(ctx.T, ctx.P);
    return std::make_unique<CamState>(B, ep_.sinks, ep_.resolve_recent(B), ep_.gqa, m_, seed_, ctx);
  }

 private:
  EvictionParams ep_;
  int64_t m_ = 4;
  uint64_t seed_ = 0;
};

}  // namespace

std::unique_ptr<Strategy> make_cam(ParamReader& p) { return std::make_unique<Cam>(p); }

}  // namespace kvsim
