// snapkv (Li et al., arXiv 2404.14469) and pyramidkv (Cai et al., arXiv 2406.02069).
// Once after prefill: the observation window is the last `window` prompt queries (default 32);
// votes v_i = sum over the window of attention to prompt token i (each window row combined over the
// G query heads by `gqa` first, strategy.h; gqa=none: one cache per query head), smoothed by 1-D
// pooling of width `kernel` (default 7), centred; keep the top B - window prompt tokens by pooled
// vote plus the window itself. Pooling as the reference code's F.max_pool1d / F.avg_pool1d with
// padding kernel/2: `max` over the in-range votes, `avg` the sum of the in-range votes divided by
// the kernel (zero padding, count_include_pad), `avg_clipped` divided by the in-range count instead.
// Decode (the papers compress only the prompt): under protocol prefill every later token is
// appended; under protocol evict the selected prompt tokens (at most B - window, also when the
// prompt fits) stay, and the other slots slide over the newest tokens, so the cache holds at most B
// slots at every step and always keeps at least `window` recent ones ("SnapKV + sliding window").
// pyramidkv: the same with per-layer budgets (pyramid_budget; schedule=reference follows
// KVCache-Factory's PyramidKVCluster, schedule=round is the rounded arithmetic schedule).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {
using Pool = SnapPool;
enum class Schedule { reference, capped, round };

}  // namespace

void pool_votes(const std::vector<double>& votes, int64_t kernel, SnapPool pool, std::vector<double>& pooled) {
  const int64_t n = static_cast<int64_t>(votes.size()), h = kernel / 2;
  pooled.assign(static_cast<size_t>(n), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t a = std::max<int64_t>(0, i - h), b = std::min<int64_t>(n - 1, i + h);
    double acc = pool == Pool::max ? votes[a] : 0.0;
    for (int64_t x = a; x <= b; ++x) acc = pool == Pool::max ? std::max(acc, votes[x]) : acc + votes[x];
    if (pool == Pool::avg) acc /= static_cast<double>(kernel);  // zero padding, count_include_pad
    if (pool == Pool::avg_clipped) acc /= static_cast<double>(b - a + 1);
    pooled[i] = acc;
  }
}

void snapkv_votes(const LayerView& lv, const HeadGroup& grp, int64_t P, int64_t window, int64_t kernel, SnapPool pool,
                  Gqa gqa, std::vector<double>& pooled) {
  const int64_t w = std::min(window, P);
  const int64_t n = P - w;  // candidates: prompt tokens before the window
  pooled.clear();
  if (n <= 0) return;
  std::vector<float> rows;
  prompt_attention_rows(lv, grp, P, P - w, P, gqa, rows);
  std::vector<double> votes(n, 0.0);
  for (int64_t j = 0; j < w; ++j)
    for (int64_t i = 0; i < n; ++i) votes[i] += rows[j * P + i];
  pool_votes(votes, kernel, pool, pooled);
}

std::vector<int32_t> snapkv_heavy(const LayerView& lv, const HeadGroup& grp, int64_t P, int64_t window, int64_t kernel,
                                  SnapPool pool, Gqa gqa, int64_t keep) {
  const int64_t n = P - std::min(window, P);
  if (n <= 0 || keep <= 0) return {};
  std::vector<double> pooled;
  snapkv_votes(lv, grp, P, window, kernel, pool, gqa, pooled);
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  keep = std::min(keep, n);
  std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                    [&](int32_t a, int32_t b) { return keep_before(pooled[a], a, pooled[b], b); });
  order.resize(static_cast<size_t>(keep));
  return order;
}

namespace {

int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0)) ? 1 : 0); }

class SnapkvState final : public StrategyState {
 public:
  SnapkvState(int64_t B, int64_t window, int64_t kernel, Pool pool, Gqa gqa, int64_t T, const HeadGroup& grp)
      : B_(B), w_(window), kernel_(kernel), pool_(pool), gqa_(gqa), heavy_(T, 0), grp_(grp) {}

  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override {
    SlotCache& c = caches[0];
    const int64_t w = std::min(w_, P);
    if (P == w) return;  // the whole prompt is the observation window: nothing to select
    for (int32_t p : snapkv_heavy(lv, grp_, P, w_, kernel_, pool_, gqa_, B_ - w)) heavy_[p] = 1;
    if (P <= B_) return;  // the prompt fits: nothing evicted yet; decode slides over the rest
    std::vector<uint8_t> k(c.size(), 1);
    for (int64_t s = 0; s < c.size(); ++s) k[s] = heavy_[c.pos(s)] || c.pos(s) >= P - w;
    c.remove_unless(k);
  }
  void prompt_scores(const SlotCache&, const LayerView& lv, int64_t P, PromptScores& out) override {
    const int64_t w = std::min(w_, P);
    std::vector<double> pooled;
    snapkv_votes(lv, grp_, P, w_, kernel_, pool_, gqa_, pooled);
    out.score.assign(static_cast<size_t>(P), 0.0);
    out.forced.assign(static_cast<size_t>(P), 0);
    for (int64_t i = 0; i < P - w; ++i) out.score[i] = pooled[i];
    for (int64_t i = P - w; i < P; ++i) out.forced[i] = 1;
    out.keep = B_;
  }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    SlotCache& c = caches[0];
    // Heavy prompt tokens are permanent; among the others the oldest goes first.
    evict_lowest(c, B_, t, 0, 0, [&](int64_t s) { return heavy_[c.pos(s)] ? INFINITY : double(c.pos(s)); });
  }

 private:
  int64_t B_, w_, kernel_;
  Pool pool_;
  Gqa gqa_;
  std::vector<uint8_t> heavy_;  // [T] selected prompt tokens
  HeadGroup grp_;
};

class Snapkv final : public Strategy {
 public:
  Snapkv(ParamReader& p, bool pyramid) : pyramid_(pyramid) {
    ep_.read(p, {.sinks = {}, .recent = {}, .gqa = true, .gqa_none = true});
    window_ = p.get_int("window", 32);
    kernel_ = p.get_int("kernel", 7);
    const std::string pool = p.get_choice("pool", {"max", "avg", "avg_clipped"});
    pool_ = pool == "max" ? Pool::max : pool == "avg" ? Pool::avg : Pool::avg_clipped;
    if (pyramid_) {
      beta_ = p.get_double("beta", 20);
      const std::string s = p.get_choice("schedule", {"reference", "capped", "round"});
      schedule_ = s == "reference" ? Schedule::reference : s == "capped" ? Schedule::capped : Schedule::round;
    }
    const std::string& t = p.spec().text;
    if (window_ <= 0) throw UsageError("strategy '" + t + "': window must be > 0");
    if (kernel_ <= 0 || kernel_ % 2 == 0) throw UsageError("strategy '" + t + "': kernel must be odd and > 0");
    if (pyramid_ && !(beta_ >= 1)) throw UsageError("strategy '" + t + "': beta must be >= 1");
    if (ep_.budget > 0) check(ep_.budget);
    set_identity(p);
  }
  bool per_query_head() const override { return ep_.gqa == Gqa::none; }
  bool exposes_prompt_scores() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    int64_t C = ep_.resolve_budget(ctx.T, ctx.P);
    check(C);
    int64_t B = pyramid_ ? pyramid_budget(C, window_, beta_, ctx.layer, ctx.n_layers, ctx.P, schedule_) : C;
    return std::make_unique<SnapkvState>(B, window_, kernel_, pool_, ep_.gqa, ctx.T, ctx.group());
  }
  // Slots of layer l of L with nominal budget C, window w, prompt P (STRATEGIES.md, pyramidkv).
  static int64_t pyramid_budget(int64_t C, int64_t w, double beta, int64_t l, int64_t L, int64_t P, Schedule s) {
    if (L <= 1) return C;
    if (s == Schedule::round) {
      double mn = static_cast<double>(C - w) / beta, mx = 2.0 * static_cast<double>(C - w) - mn;
      double b = mx - static_cast<double>(l) * (mx - mn) / static_cast<double>(L - 1);
      return std::max<int64_t>(1, std::llround(b)) + w;
    }
    const int64_t n = C - w;
    // A prompt shorter than C is kept whole; below 2 (C - w) the reference keeps C in every layer.
    if (P < C || (s == Schedule::reference && P < 2 * n)) return C;
    int64_t mn = static_cast<int64_t>(std::floor(static_cast<double>(n) / beta)), mx = 2 * n - mn;
    if (mx >= P - w) mx = P - w, mn = 2 * n - mx;  // no layer keeps more than the prompt holds
    return mx - l * floor_div(mx - mn, L - 1) + w;
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
  Pool pool_ = Pool::max;
  double beta_ = 20;
  Schedule schedule_ = Schedule::reference;
};
}  // namespace

std::unique_ptr<Strategy> make_snapkv(ParamReader& p) { return std::make_unique<Snapkv>(p, false); }
std::unique_ptr<Strategy> make_pyramidkv(ParamReader& p) { return std::make_unique<Snapkv>(p, true); }

}  // namespace kvsim
