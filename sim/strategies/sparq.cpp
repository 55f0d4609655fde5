// sparq (protocol C, sim/strategies/STRATEGIES.md): SparQ Attention, "SparQ Attention:
// Bandwidth-Efficient LLM Inference" (Ribar et al., arXiv 2312.04985; the paper's algorithm listing,
// the same estimator in NVlabs/RocketKV). Per KV head, with its G query heads:
//   1. i1 = the r channels of largest Σ_g |q_g|;
//   2. ŝ_g = softmax(q_g[i1]·K[:, i1]ᵀ / τ_g), τ_g = √(D·‖q_g[i1]‖₁ / ‖q_g‖₁);
//   3. i2 = the k slots of largest Σ_g ŝ_g;
//   4. ô_g = α_g·softmax(q_g·K[i2]ᵀ/√D)·V[i2] + (1 − α_g)·v̄, α_g = Σ_{i∈i2} ŝ_g,i, v̄ the mean value.
// Step 4 is attention over all n slots with weights Q_i = α·softmax_{i2}(i)·[i ∈ i2] + (1 − α)/n:
// the Selection is the whole row, i2 first (the `loaded` K/V), with the logit correction
// log Q_i − z_i per entry; the rest enters through v̄, which the metadata already counts.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "sim/base/error.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {
// log Σ_i exp(a[idx[i]]).
double log_sum_exp(const double* a, const std::vector<int32_t>& idx) {
  double m = -INFINITY;
  for (int32_t i : idx) m = std::max(m, a[i]);
  if (!std::isfinite(m)) return m;
  double s = 0;
  for (int32_t i : idx) s += std::exp(a[i] - m);
  return m + std::log(s);
}

double log_add_exp(double a, double b) {
  const double m = std::max(a, b);
  return m + std::log(std::exp(a - m) + std::exp(b - m));
}

class SparqState final : public StrategyState {
 public:
  SparqState(int64_t k, int64_t r, bool vmean, bool kcopy, int64_t D, int64_t G)
      : k_(k), r_(r), vmean_(vmean), kcopy_(kcopy), D_(D), G_(G) {}
  void prefill(std::span<SlotCache> caches, const LayerView&, int64_t) override { n_ = caches[0].size(); }
  void evict(std::span<SlotCache>, int64_t) override {}
  // v̄ (D fp32, a running mean) and, with kcopy=1, the paper's channel-major fp16 copy of K.
  double state_bytes(int64_t) const override {
    return (vmean_ ? 4.0 * D_ : 0.0) + (kcopy_ ? 2.0 * static_cast<double>(n_ * D_) : 0.0);
  }
  // The r channels i1 of every key (fp16) and v̄; the engine adds the loaded i2 slots.
  double metadata_read_bytes(const SlotCache& cache, int64_t, std::span<const Selection>) const override {
    return 2.0 * static_cast<double>(r_ * cache.size()) + (vmean_ ? 4.0 * D_ : 0.0);
  }

  void select(const SlotCache& cache, int64_t, const float* q, int64_t q_stride, int64_t,
              std::span<Selection> sel) override {
    const int64_t n = cache.size();
    n_ = n;
    // 1. i1: the r channels of largest Σ_g |q_g| (ties to the lower channel).
    std::vector<double> absq(static_cast<size_t>(D_), 0.0);
    for (int64_t g = 0; g < G_; ++g)
      for (int64_t x = 0; x < D_; ++x) absq[x] += std::fabs(static_cast<double>(q[g * q_stride + x]));
    std::vector<int32_t> ch(static_cast<size_t>(D_));
    std::iota(ch.begin(), ch.end(), 0);
    std::partial_sort(ch.begin(), ch.begin() + r_, ch.end(),
                      [&](int32_t a, int32_t b) { return keep_before(absq[a], a, absq[b], b); });
    ch.resize(static_cast<size_t>(r_));
    // 2. Approximate scores a_g (log ŝ_g up to lse_g) over every slot.
    a_.assign(static_cast<size_t>(G_ * n), 0.0);
    lse_.assign(static_cast<size_t>(G_), 0.0);
    std::vector<int32_t> all(static_cast<size_t>(n));
    std::iota(all.begin(), all.end(), 0);
    std::vector<double> score(static_cast<size_t>(n), 0.0);
    for (int64_t g = 0; g < G_; ++g) {
      const float* qg = q + g * q_stride;
      double l1 = 0, l1r = 0;
      for (int64_t x = 0; x < D_; ++x) l1 += std::fabs(static_cast<double>(qg[x]));
      for (int32_t x : ch) l1r += std::fabs(static_cast<double>(qg[x]));
      double* ag = a_.data() + g * n;
      if (l1r > 0) {  // else every score is 0: ŝ uniform
        const double tau = std::sqrt(static_cast<double>(D_) * l1r / l1);
        for (int64_t s = 0; s < n; ++s) {
          double d = 0;
          for (int32_t x : ch) d += static_cast<double>(qg[x]) * cache.key(s)[x];
          ag[s] = d / tau + cache.bias(s);
        }
      }
      lse_[g] = log_sum_exp(ag, all);
      for (int64_t s = 0; s < n; ++s) score[s] += std::exp(ag[s] - lse_[g]);
    }
    // 3. i2: the k slots of largest Σ_g ŝ_g (ties to the lower position), then the rest.
    std::vector<int32_t> i2 = all;
    const int64_t k = std::min(k_, n);
    auto better = [&](int32_t a, int32_t b) { return keep_before(score[a], cache.pos(a), score[b], cache.pos(b)); };
    std::partial_sort(i2.begin(), i2.begin() + k, i2.end(), better);
    std::vector<int32_t> rest(i2.begin() + k, i2.end());
    i2.resize(static_cast<size_t>(k));
    std::sort(i2.begin(), i2.end());  // slot order: with k >= n, attention is full's exactly
    std::sort(rest.begin(), rest.end());
    // 4. The mixture as logit corrections. α and 1 − α are kept as logs of sums over i2 and over the
    // rest, so 1 − α is never formed by subtraction (it cannot round to 0 while the rest is non-empty).
    const double scale = 1.0 / std::sqrt(static_cast<double>(D_));
    z_.resize(static_cast<size_t>(n));
    for (int64_t g = 0; g < G_; ++g) {
      Selection& out = sel[g];
      out.clear();
      out.slots = i2;
      if (!vmean_ || rest.empty()) continue;  // plain top-k attention; or α = 1: no rest to mix in
      const float* qg = q + g * q_stride;
      const double* ag = a_.data() + g * n;
      for (int64_t s = 0; s < n; ++s) {
        double d = 0;
        for (int64_t x = 0; x < D_; ++x) d += static_cast<double>(qg[x]) * cache.key(s)[x];
        z_[s] = d * scale + cache.bias(s);  // the slot's own logit, as the attention kernel forms it
      }
      const double log_alpha = log_sum_exp(ag, i2) - lse_[g];
      const double log_rest = log_sum_exp(ag, rest) - lse_[g] - std::log(static_cast<double>(n));  // (1 − α)/n
      const double lz = log_sum_exp(z_.data(), i2);
      out.slots.insert(out.slots.end(), rest.begin(), rest.end());
      out.loaded = k;
      out.bias.reserve(static_cast<size_t>(n));
      for (int32_t s : i2)
        out.bias.push_back(static_cast<float>(log_add_exp(log_alpha + z_[s] - lz, log_rest) - z_[s]));
      for (int32_t s : rest) out.bias.push_back(static_cast<float>(log_rest - z_[s]));
    }
  }

 private:
  int64_t k_, r_;
  bool vmean_, kcopy_;
  int64_t D_, G_;
  int64_t n_ = 0;
  std::vector<double> a_, lse_, z_;
};

class Sparq final : public Strategy {
 public:
  explicit Sparq(ParamReader& p) {
    const std::string& spec = p.spec().text;
    const bool hk = p.has("k");
    const int given = int(hk) + int(p.has("budget")) + int(p.has("ratio")) + int(p.has("press_ratio"));
    if (given != 1)
      throw UsageError("strategy '" + spec +
                       "': give exactly one of k=TOKENS (the paper's name; = budget), budget=, ratio= or press_ratio=");
    if (hk) {
      k_ = p.get_int("k", 0);
      if (k_ <= 0) throw UsageError("strategy '" + spec + "': k=" + std::to_string(k_) + " must be > 0");
    } else {
      ep_.read(p, {.sinks = {}, .recent = {}, .gqa = false});
    }
    r_ = p.get_int("r", -1, IntRange{-1, kMaxIntParam});  // -1: D/8
    if (r_ == -1) p.set_resolved("r", "D/8");
    if (r_ == 0 || r_ < -1) throw UsageError("strategy '" + spec + "': r=" + std::to_string(r_) + " must be >= 1");
    vmean_ = p.get_flag("vmean", true);
    kcopy_ = p.get_flag("kcopy", false);
    set_identity(p);
  }
  bool is_selector() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    const int64_t r = r_ > 0 ? r_ : std::max<int64_t>(1, ctx.D / 8);
    if (r > ctx.D)
      throw UsageError("strategy '" + spec_text_ + "': r=" + std::to_string(r) +
                       " channels exceed the head dim D = " + std::to_string(ctx.D));
    const int64_t k = k_ > 0 ? k_ : ep_.resolve_budget(ctx.T, ctx.P);
    return std::make_unique<SparqState>(k, r, vmean_ == 1, kcopy_ == 1, ctx.D, ctx.G);
  }

 private:
  EvictionParams ep_;
  int64_t k_ = -1, r_ = -1, vmean_ = 1, kcopy_ = 0;
};
}  // namespace

std::unique_ptr<Strategy> make_sparq(ParamReader& p) { return std::make_unique<Sparq>(p); }

}  // namespace kvsim
