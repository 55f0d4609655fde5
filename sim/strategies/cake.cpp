// cake (Qin et al., "CAKE: Cascading and Adaptive KV Cache Eviction with Layer Preferences", arXiv
// 2503.12491; reference code qtris123/cakekv: cake/model/modify_llama.py, cake/cake_cache.py,
// cake/utils.py adjust_budgets). Per layer, from the window attention A of the last w = `window`
// prompt queries (every query head, softmax over all keys, causal inside the window; A_past its
// columns i < P - w):
//   layer preference  p = E^(1/tau1) · V^(1/tau2), E = -sum A_past log(A_past + 1e-10) and V = sum of
//                     the (unbiased, as torch.var) variance over the window queries of A_past, both
//                     summed over heads, queries and keys;
//   layer budgets     total = (C - w)·L (C = the budget, per layer and window included, as the
//                     reference's cache_size); B_l = int(p_l / sum p · total), capped at P - w with the
//                     excess spread evenly and the sum fixed to total (adjust_budgets);
//   token scores      per query head mean_j A[j, i] + gamma · var_j A[j, i] over the window queries,
//                     avg-pooled over `kernel` neighbours (zero padding, count_include_pad), averaged
//                     over the G query heads of the KV head; each KV head keeps its layer's top B_l
//                     past tokens (higher score, then lower position) plus the window.
// A prompt of P <= C + w tokens is not compressed, and every layer's budget is then C - w. The
// layer budgets need every layer's prompt, so cake plans across layers (Strategy::needs_model_plan):
// the profile of a layer is (E, V), the plan is the L budgets B_l.
// Decode (protocol evict, the reference's CakeDecodingKVCache_LayerWise): when a cache holds more than
// B_l + w slots, the current query's attention over its slots, all but the last w in the cache's
// order, is avg-pooled in that order and averaged over the group; the top B_l of them and the last w
// stay. The cache's order is the reference's: after a cut, the kept tokens in decreasing score
// order (its topk, unsorted), then the last w, then each new token (STRATEGIES.md, "cake").
// Under protocol prefill the cut at prefill is the only one. No state beyond the step.
#include <cmath>
#include <numeric>
#include <vector>

#include "sim/base/error.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

// Window attention of query head h: rows[j * P + i] for the last w prompt queries j (causal).
void window_rows(const LayerView& lv, int64_t h, int64_t P, int64_t w, std::vector<float>& rows) {
  prompt_attention_rows(lv, {h / lv.G(), h, 1}, P, P - w, P, Gqa::sum, rows);
}

// Unbiased variance over the w rows of column i (torch.var's default).
double column_var(const std::vector<float>& rows, int64_t P, int64_t w, int64_t i, double* mean_out = nullptr) {
  double m = 0;
  for (int64_t j = 0; j < w; ++j) m += rows[j * P + i];
  m /= static_cast<double>(w);
  double s = 0;
  for (int64_t j = 0; j < w; ++j) s += (rows[j * P + i] - m) * (rows[j * P + i] - m);
  if (mean_out) *mean_out = m;
  return s / static_cast<double>(w - 1);
}

// `order` (positions in the cache's order) ranked by score[k]: the best `keep`, best first.
std::vector<int32_t> top_in_order(const std::vector<int32_t>& order, const std::vector<double>& score, int64_t keep) {
  std::vector<size_t> idx(order.size());
  std::iota(idx.begin(), idx.end(), size_t{0});
  keep = std::min<int64_t>(keep, static_cast<int64_t>(idx.size()));
  std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(),
                    [&](size_t a, size_t b) { return keep_before(score[a], order[a], score[b], order[b]); });
  std::vector<int32_t> out(static_cast<size_t>(keep));
  for (int64_t k = 0; k < keep; ++k) out[k] = order[idx[k]];
  return out;
}

class Cake;

class CakeState final : public StrategyState {
 public:
  CakeState(const Cake& s, const InstanceContext& ctx, int64_t C) : s_(s), ctx_(ctx), C_(C) {}
  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override;
  void observe(std::span<const SlotCache> caches, std::span<const float* const> attn, int64_t t) override;
  void evict(std::span<SlotCache> caches, int64_t t) override;

 private:
  void keep_layout(SlotCache& c);
  const Cake& s_;
  InstanceContext ctx_;
  int64_t C_;
  int64_t B_ = 0;                // the layer's budget of past tokens (the plan's B_l)
  std::vector<int32_t> layout_;  // positions of the slots in the reference cache's order
  std::vector<double> step_;     // by position: this step's attention, averaged over the group
};

class Cake final : public Strategy {
 public:
  explicit Cake(ParamReader& p) {
    ev_.read(p, {});
    window_ = p.get_int("window", 32, IntRange{2, kMaxIntParam});
    kernel_ = p.get_int("kernel", 5, IntRange{1, kMaxIntParam});
    if (kernel_ % 2 == 0)
      throw UsageError("strategy '" + p.spec().text + "': kernel=" + std::to_string(kernel_) + " must be odd");
    gamma_ = p.get_double("gamma", 200.0);
    tau1_ = p.get_double("tau1", 1.0);
    tau2_ = p.get_double("tau2", 1.0);
    if (!(gamma_ >= 0))
      throw UsageError("strategy '" + p.spec().text + "': gamma=" + p.resolved().at("gamma") + " must be >= 0");
    if (!(tau1_ > 0) || !(tau2_ > 0))
      throw UsageError("strategy '" + p.spec().text + "': tau1=" + p.resolved().at("tau1") +
                       ", tau2=" + p.resolved().at("tau2") + " must be > 0");
    set_identity(p);
  }
  bool needs_model_plan() const override { return true; }

  // (E, V) of the layer's window attention over the past columns, summed over every query head.
  std::vector<double> layer_profile(const LayerView& lv, int64_t P) const override {
    const int64_t w = window_;
    if (P <= w + 1) return {0.0, 0.0};  // not compressed (P <= C + w): the profile is unused
    std::vector<float> rows;
    double E = 0, V = 0;
    for (int64_t h = 0; h < lv.H; ++h) {
      window_rows(lv, h, P, w, rows);
      for (int64_t i = 0; i < P - w; ++i) {
        for (int64_t j = 0; j < w; ++j) {
          const double a = rows[j * P + i];
          E -= a * std::log(a + 1e-10);
        }
        V += column_var(rows, P, w, i);
      }
    }
    return {E, V};
  }

  std::vector<double> make_plan(const std::vector<std::vector<double>>& profiles, int64_t T, int64_t P) const override {
    const int64_t L = static_cast<int64_t>(profiles.size()), C = ev_.resolve_budget(T, P), w = window_;
    std::vector<double> plan(static_cast<size_t>(L), static_cast<double>(C - w));
    if (P <= C + w) return plan;
    const int64_t total = (C - w) * L, seq = P - w;
    std::vector<double> pref(static_cast<size_t>(L));
    double sum = 0;
    for (int64_t l = 0; l < L; ++l) {
      pref[l] = std::pow(profiles[l][0], 1.0 / tau1_) * std::pow(profiles[l][1], 1.0 / tau2_);
      sum += pref[l];
    }
    if (!(sum > 0) || !std::isfinite(sum)) {  // no preference at all: the uniform budgets, capped
      for (double& b : plan) b = static_cast<double>(std::min(C - w, seq));
      return plan;
    }
    std::vector<int64_t> b(static_cast<size_t>(L));
    for (int64_t l = 0; l < L; ++l) b[l] = static_cast<int64_t>(pref[l] / sum * static_cast<double>(total));
    adjust_budgets(b, total, seq);
    for (int64_t l = 0; l < L; ++l) plan[l] = static_cast<double>(std::clamp<int64_t>(b[l], 0, seq));
    return plan;
  }

  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    const int64_t C = ev_.resolve_budget(ctx.T, ctx.P);
    if (C <= window_)
      throw UsageError("strategy '" + spec_text() + "': budget " + std::to_string(C) + " must exceed window = " +
                       std::to_string(window_) + " (each layer keeps its budget of past tokens plus the window)");
    return std::make_unique<CakeState>(*this, ctx, C);
  }

  // The reference's token scores of KV head `kv` over the past positions 0..P-w-1.
  std::vector<double> token_scores(const LayerView& lv, int64_t kv, int64_t P) const {
    const int64_t w = window_, n = P - w, G = lv.G();
    std::vector<float> rows;
    std::vector<double> raw(static_cast<size_t>(n)), pooled, score(static_cast<size_t>(n), 0.0);
    for (int64_t g = 0; g < G; ++g) {
      window_rows(lv, kv * G + g, P, w, rows);
      for (int64_t i = 0; i < n; ++i) {
        double mean = 0;
        const double var = column_var(rows, P, w, i, &mean);
        raw[i] = mean + gamma_ * var;
      }
      pool_votes(raw, kernel_, SnapPool::avg, pooled);
      for (int64_t i = 0; i < n; ++i) score[i] += pooled[i] / static_cast<double>(G);
    }
    return score;
  }
  int64_t window() const { return window_; }
  int64_t kernel() const { return kernel_; }

 private:
  // cake/utils.py adjust_budgets: cap at seq, spread the excess evenly over the layers under seq
  // (the remainder to the first of them), then fix the sum to total the same way.
  static void adjust_budgets(std::vector<int64_t>& b, int64_t total, int64_t seq) {
    const auto spread = [&](int64_t amount, auto valid) {  // amount > 0 adds, < 0 takes away
      std::vector<size_t> v;
      for (size_t l = 0; l < b.size(); ++l)
        if (valid(b[l])) v.push_back(l);
      if (v.empty()) return;
      const int64_t n = static_cast<int64_t>(v.size()), a = std::abs(amount), sign = amount > 0 ? 1 : -1;
      for (size_t k = 0; k < v.size(); ++k) b[v[k]] += sign * (a / n + (static_cast<int64_t>(k) < a % n ? 1 : 0));
    };
    int64_t excess = 0;
    for (int64_t& x : b) excess += std::max<int64_t>(x - seq, 0), x = std::min(x, seq);
    if (excess > 0) spread(excess, [&](int64_t x) { return x < seq; });
    const int64_t diff = total - std::accumulate(b.begin(), b.end(), int64_t{0});
    if (diff > 0) spread(diff, [&](int64_t x) { return x < seq; });
    if (diff < 0) spread(diff, [&](int64_t x) { return x > 1; });
  }

  EvictionParams ev_;
  int64_t window_ = 32, kernel_ = 5;
  double gamma_ = 200, tau1_ = 1, tau2_ = 1;
};

void CakeState::keep_layout(SlotCache& c) {
  std::vector<uint8_t> in(static_cast<size_t>(ctx_.T), 0), keep(static_cast<size_t>(c.size()), 0);
  for (int32_t p : layout_) in[p] = 1;
  for (int64_t s = 0; s < c.size(); ++s) keep[s] = in[c.pos(s)];
  c.remove_unless(keep);
}

void CakeState::prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) {
  std::vector<double> own;
  const std::vector<double>& plan = model_plan(s_, ctx_, lv, P, own);
  KVSIM_ASSERT(static_cast<int64_t>(plan.size()) == ctx_.n_layers);
  B_ = static_cast<int64_t>(plan[static_cast<size_t>(ctx_.layer)]);
  const int64_t w = s_.window();
  layout_.resize(static_cast<size_t>(P));
  std::iota(layout_.begin(), layout_.end(), 0);
  if (P <= C_ + w) return;  // not compressed: the cache in position order
  const std::vector<int32_t> past(layout_.begin(), layout_.end() - w);
  layout_ = top_in_order(past, s_.token_scores(lv, ctx_.kv0, P), B_);
  for (int64_t i = P - w; i < P; ++i) layout_.push_back(static_cast<int32_t>(i));
  keep_layout(caches[0]);
}

void CakeState::observe(std::span<const SlotCache> caches, std::span<const float* const> attn, int64_t t) {
  const SlotCache& c = caches[0];
  layout_.push_back(static_cast<int32_t>(t));  // token t entered at the end of the cache
  step_.resize(static_cast<size_t>(ctx_.T));
  const int64_t n = c.size(), G = ctx_.rows();
  for (int64_t s = 0; s < n; ++s) {
    double a = 0;
    for (int64_t g = 0; g < G; ++g) a += attn[0][g * n + s];
    step_[c.pos(s)] = a / static_cast<double>(G);
  }
}

void CakeState::evict(std::span<SlotCache> caches, int64_t t) {
  (void)t;
  SlotCache& c = caches[0];
  const int64_t w = s_.window(), n = c.size();
  KVSIM_ASSERT(static_cast<int64_t>(layout_.size()) == n);
  if (n <= B_ + w) return;
  const std::vector<int32_t> past(layout_.begin(), layout_.end() - w);
  std::vector<double> a(past.size()), pooled;
  for (size_t k = 0; k < past.size(); ++k) a[k] = step_[past[k]];
  pool_votes(a, s_.kernel(), SnapPool::avg, pooled);
  std::vector<int32_t> next = top_in_order(past, pooled, B_);
  next.insert(next.end(), layout_.end() - w, layout_.end());
  layout_ = std::move(next);
  keep_layout(c);
}

}  // namespace

std::unique_ptr<Strategy> make_cake(ParamReader& p) { return std::make_unique<Cake>(p); }

}  // namespace kvsim
