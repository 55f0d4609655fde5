// expected_attention (Devoto et al., "Expected Attention: KV Cache Compression by Estimating Attention
// from Future Queries Distribution", arXiv 2510.00636; reference code kvpress
// `expected_attention_press.py`). Query-agnostic: the future queries are modelled as a Gaussian and
// each key scored by the attention it would draw in expectation.
//   1. Per query head: mean μ and covariance Σ (divided by the count) of the pre-RoPE queries at
//      positions [sinks, P) (LayerView::q_pre: the trace's q_pre dataset).
//   2. R̄ = mean over the `future` positions p ∈ [P, P + future) of the RoPE rotation R_p (the trace's
//      rope_style and rope_theta, frequencies θ^(−2i/D)); μ' = R̄μ, Σ' = R̄ΣR̄ᵀ.
//   3. z_i = μ'·k_i/√D + k_iᵀΣ'k_i/(2D) over the held post-RoPE keys outside the sinks (cov=0 drops the
//      second term); a = softmax(z) per query head, mean over the G query heads of the KV head.
//   4. score_i = (a_i + eps)·‖v_i‖₂ (vnorm=0: a_i + eps); the first `sinks` tokens are always kept.
// Prefill cuts the prompt to the top B. Under protocol evict each decode step t reruns the rule with
// the statistics of the pre-RoPE queries of the last `window` positions (at most [sinks, t]) and the
// future positions (t, t + future], and evicts the lowest; that window of queries (fp16) is the state
// `bytes` counts. Keys and values are those the cache holds (dequantized under a codec).
#include <algorithm>
#include <cmath>
#include <vector>

#include "sim/base/error.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

struct Options {
  int64_t sinks = 4, future = 512, window = 256;
  double eps = 0;
  bool cov = true, vnorm = true;
};

// R̄ [D, D], the mean of the RoPE rotations of positions p0 .. p0 + n - 1 (row-major, applied as R̄ x).
std::vector<double> mean_rotation(int64_t D, int64_t p0, int64_t n, double theta, RopeStyle style) {
  std::vector<double> R(static_cast<size_t>(D * D), 0.0);
  if (style == RopeStyle::none) {
    for (int64_t x = 0; x < D; ++x) R[x * D + x] = 1.0;
    return R;
  }
  const int64_t half = D / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double f = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(D));
    double c = 0, s = 0;
    for (int64_t p = p0; p < p0 + n; ++p)
      c += std::cos(static_cast<double>(p) * f), s += std::sin(static_cast<double>(p) * f);
    c /= static_cast<double>(n), s /= static_cast<double>(n);
    const int64_t i0 = style == RopeStyle::interleaved ? 2 * i : i;
    const int64_t i1 = style == RopeStyle::interleaved ? 2 * i + 1 : i + half;
    // apply_rope (sim/base/rope.h): x0' = x0 c − x1 s, x1' = x0 s + x1 c.
    R[i0 * D + i0] = c, R[i0 * D + i1] = -s, R[i1 * D + i0] = s, R[i1 * D + i1] = c;
  }
  return R;
}

class ExpectedAttentionState final : public StrategyState {
 public:
  ExpectedAttentionState(int64_t B, const Options& o, const HeadGroup& grp) : B_(B), o_(o), grp_(grp) {}

  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override {
    bind(lv);
    rescore(caches[0], o_.sinks, P, P);
    evict_lowest(caches[0], B_, P - 1, o_.sinks, 0, [&](int64_t s) { return score_[s]; });
  }
  void prompt_scores(const SlotCache& c, const LayerView& lv, int64_t P, PromptScores& out) override {
    bind(lv);
    rescore(c, o_.sinks, P, P);
    out.score.assign(static_cast<size_t>(P), 0.0);
    out.forced.assign(static_cast<size_t>(P), 0);
    for (int64_t s = 0; s < c.size(); ++s) {
      out.score[c.pos(s)] = score_[s];
      out.forced[c.pos(s)] = c.pos(s) < o_.sinks;
    }
    out.keep = B_;
  }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    SlotCache& c = caches[0];
    if (c.size() <= B_) return;
    rescore(c, std::max(o_.sinks, t + 1 - o_.window), t + 1, t + 1);
    evict_lowest(c, B_, t, o_.sinks, 0, [&](int64_t s) { return score_[s]; });
  }
  double state_bytes(int64_t) const override {
    return 2.0 * static_cast<double>(grp_.n * o_.window * D_);  // the window of pre-RoPE queries, fp16
  }

 private:
  void bind(const LayerView& lv) {
    if (!lv.q_pre)
      throw UsageError(
          "expected_attention needs the pre-RoPE queries q_pre (record the trace with kvsim record --pre)");
    q_pre_ = lv.q_pre, T_ = lv.T, D_ = lv.D, theta_ = lv.rope_theta, style_ = lv.rope_style;
  }
  // score_[s] for every slot of c: statistics of the queries at [j0, j1), future positions from p0.
  void rescore(const SlotCache& c, int64_t j0, int64_t j1, int64_t p0) {
    const int64_t D = D_, n = c.size();
    const std::vector<double> R = mean_rotation(D, p0, o_.future, theta_, style_);
    std::vector<double> a(static_cast<size_t>(n), 0.0), z(static_cast<size_t>(n));
    std::vector<double> mu(D), sig(D * D), mu2(D), tmp(D * D), sig2(D * D);
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    for (int64_t g = 0; g < grp_.n; ++g) {
      const float* q = q_pre_ + (grp_.q0 + g) * T_ * D;
      std::fill(mu.begin(), mu.end(), 0.0), std::fill(sig.begin(), sig.end(), 0.0);
      const double cnt = static_cast<double>(std::max<int64_t>(0, j1 - j0));
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t x = 0; x < D; ++x) mu[x] += q[j * D + x] / cnt;
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t x = 0; x < D; ++x)
          for (int64_t y = 0; y < D; ++y) sig[x * D + y] += (q[j * D + x] - mu[x]) * (q[j * D + y] - mu[y]) / cnt;
      // μ' = R̄μ, Σ' = R̄ΣR̄ᵀ.
      for (int64_t x = 0; x < D; ++x) {
        mu2[x] = 0;
        for (int64_t y = 0; y < D; ++y) mu2[x] += R[x * D + y] * mu[y];
      }
      for (int64_t x = 0; x < D; ++x)
        for (int64_t y = 0; y < D; ++y) {
          double acc = 0;
          for (int64_t m = 0; m < D; ++m) acc += R[x * D + m] * sig[m * D + y];
          tmp[x * D + y] = acc;
        }
      for (int64_t x = 0; x < D; ++x)
        for (int64_t y = 0; y < D; ++y) {
          double acc = 0;
          for (int64_t m = 0; m < D; ++m) acc += tmp[x * D + m] * R[y * D + m];
          sig2[x * D + y] = acc;
        }
      double mx = -INFINITY;
      for (int64_t s = 0; s < n; ++s) {
        if (c.pos(s) < o_.sinks) continue;
        const float* k = c.key(s);
        double lin = 0, quad = 0;
        for (int64_t x = 0; x < D; ++x) {
          lin += mu2[x] * k[x];
          if (!o_.cov) continue;
          double row = 0;
          for (int64_t y = 0; y < D; ++y) row += sig2[x * D + y] * k[y];
          quad += k[x] * row;
        }
        z[s] = lin * scale + quad / (2.0 * static_cast<double>(D));
        mx = std::max(mx, z[s]);
      }
      double sum = 0;
      for (int64_t s = 0; s < n; ++s)
        if (c.pos(s) >= o_.sinks) sum += std::exp(z[s] - mx);
      for (int64_t s = 0; s < n; ++s)
        if (c.pos(s) >= o_.sinks) a[s] += std::exp(z[s] - mx) / sum / static_cast<double>(grp_.n);
    }
    score_.assign(static_cast<size_t>(n), 0.0);
    for (int64_t s = 0; s < n; ++s) {
      double vn = 1;
      if (o_.vnorm) {
        vn = 0;
        for (int64_t x = 0; x < D; ++x) vn += static_cast<double>(c.value(s)[x]) * c.value(s)[x];
        vn = std::sqrt(vn);
      }
      score_[s] = (a[s] + o_.eps) * vn;
    }
  }

  int64_t B_;
  Options o_;
  HeadGroup grp_;
  const float* q_pre_ = nullptr;  // [H, T, D], row j read from step j on
  int64_t T_ = 0, D_ = 0;
  double theta_ = 10000.0;
  RopeStyle style_ = RopeStyle::none;
  std::vector<double> score_;  // per slot, this step only
};

class ExpectedAttention final : public Strategy {
 public:
  explicit ExpectedAttention(ParamReader& p) {
    ep_.read(p, {.sinks = 4, .recent = {}, .gqa = false});
    o_.sinks = ep_.sinks;
    o_.future = p.get_int("future", 512, IntRange{1, kMaxIntParam});
    o_.window = p.get_int("window", 256, IntRange{1, kMaxIntParam});
    o_.eps = p.get_double("eps", 0);
    o_.cov = p.get_int("cov", 1, IntRange{0, 1}) == 1;
    o_.vnorm = p.get_int("vnorm", 1, IntRange{0, 1}) == 1;
    if (!(o_.eps >= 0)) throw UsageError("strategy '" + p.spec().text + "': eps must be >= 0");
    set_identity(p);
  }
  bool needs_q_pre() const override { return true; }
  bool exposes_prompt_scores() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    return std::make_unique<ExpectedAttentionState>(ep_.resolve_budget(ctx.T, ctx.P), o_, ctx.group());
  }

 private:
  EvictionParams ep_;
  Options o_;
};

}  // namespace

std::unique_ptr<Strategy> make_expected_attention(ParamReader& p) { return std::make_unique<ExpectedAttention>(p); }

}  // namespace kvsim
