// snapkv (Li et al., arXiv 2404.14469) and pyramidkv (Cai et al., arXiv 2406.02069).
// Once after prefill: the observation window is the last `window` prompt queries (default 32);
// votes v_i = sum over the window of attention to prompt token i (combined over the G query heads
// by `gqa`), smoothed by 1-D pooling (`pool` = max | avg, `kernel` default 7, centred, clipped at
// the ends); keep the top B - window prompt tokens by pooled vote plus the window itself.
// Decode (the papers compress only the prompt): the selected prompt tokens (at most B - window,
// also when the prompt fits) stay, and the other slots slide over the newest tokens, so the cache
// holds at most B slots at every step and always keeps at least `window` recent ones.
// pyramidkv: the same with per-layer budgets on an arithmetic schedule, C = budget, w = window,
//   min = (C - w) / beta, max = 2 (C - w) - min, budget_l = max - l (max - min) / (L - 1) + w.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

std::vector<int32_t> snapkv_heavy(const LayerView& lv, int64_t kv, int64_t P, int64_t window, int64_t kernel,
                                  bool max_pool, Gqa gqa, int64_t keep) {
  const int64_t w = std::min(window, P);
  const int64_t n = P - w;  // candidates: prompt tokens before the window
  if (n <= 0 || keep <= 0) return {};
  std::vector<float> rows;
  prompt_attention_rows(lv, kv, P, P - w, P, gqa, rows);
  std::vector<double> votes(n, 0.0), pooled(n, 0.0);
  for (int64_t j = 0; j < w; ++j)
    for (int64_t i = 0; i < n; ++i) votes[i] += rows[j * P + i];
  const int64_t h = kernel / 2;
  for (int64_t i = 0; i < n; ++i) {
    int64_t a = std::max<int64_t>(0, i - h), b = std::min<int64_t>(n - 1, i + h);
    double acc = max_pool ? votes[a] : 0.0;
    for (int64_t x = a; x <= b; ++x) acc = max_pool ? std::max(acc, votes[x]) : acc + votes[x];
    pooled[i] = max_pool ? acc : acc / static_cast<double>(b - a + 1);
  }
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  keep = std::min(keep, n);
  std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                    [&](int32_t a, int32_t b) { return keep_before(pooled[a], a, pooled[b], b); });
  order.resize(static_cast<size_t>(keep));
  return order;
}

namespace {
class SnapkvState final : public StrategyState {
 public:
  SnapkvState(int64_t B, int64_t window, int64_t kernel, bool max_pool, Gqa gqa, int64_t T, int64_t kv)
      : B_(B), w_(window), kernel_(kernel), max_pool_(max_pool), gqa_(gqa), heavy_(T, 0), kv_(kv) {}

  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override {
    SlotCache& c = caches[0];
    const int64_t w = std::min(w_, P);
    if (P == w) return;  // the whole prompt is the observation window: nothing to select
    for (int32_t p : snapkv_heavy(lv, kv_, P, w_, kernel_, max_pool_, gqa_, B_ - w)) heavy_[p] = 1;
    if (P <= B_) return;  // the prompt fits: nothing evicted yet; decode slides over the rest
    std::vector<uint8_t> k(c.size(), 1);
    for (int64_t s = 0; s < c.size(); ++s) k[s] = heavy_[c.pos(s)] || c.pos(s) >= P - w;
    c.remove_unless(k);
  }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    SlotCache& c = caches[0];
    // Heavy prompt tokens are permanent; among the others the oldest goes first.
    evict_lowest(c, B_, t, 0, 0, [&](int64_t s) { return heavy_[c.pos(s)] ? INFINITY : double(c.pos(s)); });
  }

 private:
  int64_t B_, w_, kernel_;
  bool max_pool_;
  Gqa gqa_;
  std::vector<uint8_t> heavy_;  // [T] selected prompt tokens
  int64_t kv_;
};

class Snapkv final : public Strategy {
 public:
  Snapkv(ParamReader& p, bool pyramid) : pyramid_(pyramid) {
    ep_.read(p, {.sinks = {}, .recent = {}, .gqa = true});
    window_ = p.get_int("window", 32);
    kernel_ = p.get_int("kernel", 7);
    max_pool_ = p.get_choice("pool", {"max", "avg"}) == "max";
    if (pyramid_) beta_ = p.get_double("beta", 20);
    const std::string& t = p.spec().text;
    if (window_ <= 0) throw UsageError("strategy '" + t + "': window must be > 0");
    if (kernel_ <= 0 || kernel_ % 2 == 0) throw UsageError("strategy '" + t + "': kernel must be odd and > 0");
    if (pyramid_ && !(beta_ >= 1)) throw UsageError("strategy '" + t + "': beta must be >= 1");
    if (ep_.budget > 0) check(ep_.budget);
    set_identity(p);
  }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    int64_t C = ep_.resolve_budget(ctx.T, ctx.P);
    check(C);
    int64_t B = pyramid_ ? pyramid_budget(C, window_, beta_, ctx.layer, ctx.n_layers) : C;
    return std::make_unique<SnapkvState>(B, window_, kernel_, max_pool_, ep_.gqa, ctx.T, ctx.kv0);
  }
  static int64_t pyramid_budget(int64_t C, int64_t w, double beta, int64_t l, int64_t L) {
    if (L <= 1) return C;
    double mn = static_cast<double>(C - w) / beta, mx = 2.0 * static_cast<double>(C - w) - mn;
    double b = mx - static_cast<double>(l) * (mx - mn) / static_cast<double>(L - 1);
    return std::max<int64_t>(1, std::llround(b)) + w;
  }

 private:
  void check(int64_t B) const {
    if (B <= window_)
      throw UsageError("strategy '" + ep_.spec + "': budget " + std::to_string(B) +
                       " must exceed window = " + std::to_string(window_));
  }
  EvictionParams ep_;
  bool pyramid_;
  int64_t window_ = 32, kernel_ = 7;
  bool max_pool_ = true;
  double beta_ = 20;
};
}  // namespace

std::unique_ptr<Strategy> make_snapkv(ParamReader& p) { return std::make_unique<Snapkv>(p, false); }
std::unique_ptr<Strategy> make_pyramidkv(ParamReader& p) { return std::make_unique<Snapkv>(p, true); }

}  // namespace kvsim
