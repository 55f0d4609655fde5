// headkv (Fu et al., "Not All Heads Matter: A Head-Level KV Cache Compression Method with Integrated
// Retrieval and Reasoning", arXiv 2410.19258; reference code KVCache-Factory run_longbench.py (the
// head capacities) and pyramidkv/pyramidkv_utils.py HeadKVCluster (the cut)). Per-head budgets from
// a file of head scores (scores=FILE, sim/strategies/head_scores.h: L rows of H query-head scores, or
// the reference's JSON {"LAYER-HEAD": [scores]} whose lists are averaged):
//   ŝ = the scores normalised to sum 1 over all L·H query heads;
//   capacity(l, h) = round(ŝ(l, h) · floor(C/beta) · L · H + C − floor(C/beta))  (torch.round: half to even);
//   per KV head, the round of the mean capacity of its G query heads;
// then SnapKV inside each KV head: the window's attention (the last `window` prompt queries, causal),
// combined over the group by the mean, max-pooled over `kernel`; the top capacity past tokens stay with
// the window. A head so holds capacity + window slots (the reference's `l = capacity + window`), so the
// layer holds on average C + window per head. A prompt of P < C is not compressed (the reference's
// base_capacity > P − window); under evict such a head grows to capacity + window, then slides. The capacities need
// every layer's shape, so headkv plans across layers (Strategy::needs_model_plan). Under protocol prefill every later
// token is appended (the paper); under protocol evict the chosen prompt tokens stay and the window and new tokens slide
// (as the allocators, sim/strategies/allocator.h). Bytes: one 4-byte length per head when a layer's heads hold
// different lengths (the reference's cu_klen metadata; ../shared/methods.md §1.3). headkv.BASE (below) puts
// another scorer inside each head. The scores themselves: a file, or kvsim heads --method retrieval.
#include <algorithm>
#include <cmath>
#include <vector>

#include "sim/base/error.h"
#include "sim/strategies/allocator.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/head_scores.h"
#include "sim/strategies/registry.h"

namespace kvsim {

std::vector<double> headkv_capacities(const HeadScores& scores, const std::string& path, const std::string& spec,
                                      const std::vector<std::vector<double>>& profiles, double C, double beta) {
  const int64_t L = static_cast<int64_t>(profiles.size()), H = static_cast<int64_t>(profiles.at(0)[0]),
                Hkv = static_cast<int64_t>(profiles.at(0)[1]), G = H / Hkv;
  if (scores.rows != L || scores.cols != H)
    throw UsageError("strategy '" + spec + "': " + path + " holds " + std::to_string(scores.rows) + " x " +
                     std::to_string(scores.cols) + " head scores, the model has " + std::to_string(L) + " layers x " +
                     std::to_string(H) + " query heads");
  double sum = 0;
  for (double v : scores.value) sum += v;
  if (!(sum > 0))
    throw UsageError("strategy '" + spec + "': the head scores of " + path + " sum to " + std::to_string(sum) +
                     "; they must sum to more than 0");
  const double share = std::floor(C / beta);
  const double pool = share * static_cast<double>(L * H), min_num = C - share;
  std::vector<double> plan(static_cast<size_t>(L * Hkv));
  for (int64_t l = 0; l < L; ++l)
    for (int64_t kv = 0; kv < Hkv; ++kv) {
      double mean = 0;
      for (int64_t g = 0; g < G; ++g)
        mean += std::nearbyint(scores.at(l, kv * G + g) / sum * pool + min_num) / static_cast<double>(G);
      plan[l * Hkv + kv] = std::nearbyint(mean);
    }
  return plan;
}

namespace {

// What headkv and headkv.BASE share: the budget C, beta and the head scores, and the capacities they give.
struct HeadkvParams {
  EvictionParams ev;
  double beta = 1.01;
  std::string path;
  HeadScores scores;
  void read(ParamReader& p) {
    ev.read(p, {});  // for headkv.BASE the base's budget (the same parameters)
    beta = p.get_double("beta", 1.01);
    if (!(beta >= 1))
      throw UsageError("strategy '" + p.spec().text + "': beta=" + p.resolved().at("beta") + " must be >= 1");
    path = p.get_string("scores", "");
    if (path.empty())
      throw UsageError("strategy '" + p.spec().text +
                       "': headkv needs scores=FILE, the head scores (L rows of H numbers, or the reference's JSON "
                       "{\"LAYER-HEAD\": [scores]}; sim/strategies/STRATEGIES.md, headkv)");
    scores = read_head_scores(path, "strategy '" + p.spec().text + "'");
  }
  // plan[l * Hkv + kv] = the KV head's capacity of past tokens.
  std::vector<double> plan(const std::vector<std::vector<double>>& profiles, int64_t T, int64_t P,
                           const std::string& spec) const {
    return headkv_capacities(scores, path, spec, profiles, static_cast<double>(ev.resolve_budget(T, P)), beta);
  }
  void check_layers(const InstanceContext& ctx, const std::string& spec) const {
    if (scores.rows != ctx.n_layers)
      throw UsageError("strategy '" + spec + "': " + path + " has " + std::to_string(scores.rows) +
                       " rows of head scores, the model has " + std::to_string(ctx.n_layers) + " layers");
  }
};

std::vector<double> head_shape(const LayerView& lv) { return {static_cast<double>(lv.H), static_cast<double>(lv.Hkv)}; }

class Headkv;

class HeadkvState final : public VarlenState {
 public:
  HeadkvState(const Headkv& s, const InstanceContext& ctx) : s_(s), ctx_(ctx) {}
  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override;
  void evict(std::span<SlotCache> caches, int64_t t) override;

 private:
  const Headkv& s_;
  InstanceContext ctx_;
  int64_t keep_ = 0;            // slots this head holds: capacity + window (or the prompt)
  std::vector<uint8_t> heavy_;  // [T] chosen prompt tokens (they never slide)
};

class Headkv final : public Strategy {
 public:
  explicit Headkv(ParamReader& p) {
    hp_.read(p);
    window_ = p.get_int("window", 8, IntRange{1, kMaxIntParam});
    kernel_ = p.get_int("kernel", 7, IntRange{1, kMaxIntParam});
    if (kernel_ % 2 == 0)
      throw UsageError("strategy '" + p.spec().text + "': kernel=" + std::to_string(kernel_) + " must be odd");
    set_identity(p);
  }
  bool needs_model_plan() const override { return true; }
  std::vector<double> layer_profile(const LayerView& lv, int64_t) const override { return head_shape(lv); }
  std::vector<double> make_plan(const std::vector<std::vector<double>>& profiles, int64_t T, int64_t P) const override {
    return hp_.plan(profiles, T, P, spec_text());
  }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    hp_.check_layers(ctx, spec_text());
    (void)hp_.ev.resolve_budget(ctx.T, ctx.P);
    return std::make_unique<HeadkvState>(*this, ctx);
  }
  int64_t budget(int64_t T, int64_t P) const { return hp_.ev.resolve_budget(T, P); }
  int64_t window() const { return window_; }
  int64_t kernel() const { return kernel_; }

 private:
  HeadkvParams hp_;
  int64_t window_ = 8, kernel_ = 7;
};

void HeadkvState::prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) {
  std::vector<double> own;
  const std::vector<double>& plan = model_plan(s_, ctx_, lv, P, own);
  const int64_t Hkv = static_cast<int64_t>(plan.size()) / ctx_.n_layers, w = std::min(s_.window(), P);
  const double* layer = plan.data() + ctx_.layer * Hkv;
  heavy_.assign(static_cast<size_t>(ctx_.T), 0);
  const bool cut = P >= s_.budget(ctx_.T, P);
  const auto cap_of = [&](int64_t k) {
    return cut ? std::min<int64_t>(static_cast<int64_t>(layer[k]), P - w) : static_cast<int64_t>(layer[k]);
  };
  const int64_t cap = cap_of(ctx_.kv0);
  keep_ = cap + w;
  for (int64_t k = 0; k < Hkv; ++k) varlen_ = varlen_ || cap_of(k) != cap;
  varlen_ = varlen_ && (cut || ctx_.protocol == Protocol::evict);
  // Not compressed (P < C): the head keeps the prompt; under evict it grows to its capacity + window
  // and then slides.
  if (!cut) return;
  for (int32_t i : snapkv_heavy(lv, ctx_.group(), P, w, s_.kernel(), SnapPool::max, Gqa::mean, cap)) heavy_[i] = 1;
  SlotCache& c = caches[0];
  std::vector<uint8_t> keep(static_cast<size_t>(c.size()));
  for (int64_t s = 0; s < c.size(); ++s) keep[s] = heavy_[c.pos(s)] || c.pos(s) >= P - w;
  c.remove_unless(keep);
}

void HeadkvState::evict(std::span<SlotCache> caches, int64_t t) {
  SlotCache& c = caches[0];
  // The chosen prompt tokens stay; the window and the new tokens slide, the oldest first.
  evict_lowest(c, keep_, t, 0, 0, [&](int64_t s) { return heavy_[c.pos(s)] ? INFINITY : double(c.pos(s)); });
}

// headkv.BASE: HeadKV's capacities around another scorer (an allocator, sim/strategies/allocator.h). The
// base's budget is C; KV head h keeps the base's forced tokens (SnapKV's window, sinks, recent) and its best
// min(capacity_h, P - forced) others, so headkv.snapkv:budget=C,window=w,kernel=7,pool=max is
// headkv:budget=C,window=w.
class HeadkvWrapState final : public AllocatorState {
 public:
  HeadkvWrapState(std::vector<std::unique_ptr<StrategyState>> base, const Strategy& s, const InstanceContext& ctx)
      : AllocatorState(std::move(base)), s_(s), ctx_(ctx) {}

 protected:
  void choose(std::vector<PromptScores>& ps, int64_t P, std::vector<std::vector<uint8_t>>& keep) override {
    std::vector<double> own;
    const std::vector<double>& plan = model_plan(s_, ctx_, view(), P, own);
    const auto Hkv = static_cast<int64_t>(ps.size());
    for (int64_t h = 0; h < Hkv; ++h) {
      std::fill(keep[h].begin(), keep[h].end(), 0);
      int64_t forced = 0;
      for (int64_t i = 0; i < P; ++i) forced += ps[h].forced[i] != 0;
      const int64_t cap = std::min<int64_t>(static_cast<int64_t>(plan[ctx_.layer * Hkv + ctx_.kv0 + h]), P - forced);
      const std::vector<int32_t> order = rank_positions(ps[h]);  // forced ones first
      for (int64_t r = 0; r < forced + cap; ++r) keep[h][order[r]] = 1;
    }
  }

 private:
  const Strategy& s_;
  InstanceContext ctx_;
};

class HeadkvWrap final : public Allocator {
 public:
  HeadkvWrap(ParamReader& p, std::unique_ptr<Strategy> base) : Allocator("headkv", std::move(base)) {
    hp_.read(p);
    finish_init(p);
  }
  bool needs_model_plan() const override { return true; }
  std::vector<double> layer_profile(const LayerView& lv, int64_t) const override { return head_shape(lv); }
  std::vector<double> make_plan(const std::vector<std::vector<double>>& profiles, int64_t T, int64_t P) const override {
    return hp_.plan(profiles, T, P, spec_text());
  }

 protected:
  std::unique_ptr<AllocatorState> make_allocator(std::vector<std::unique_ptr<StrategyState>> base,
                                                 const InstanceContext& ctx) const override {
    hp_.check_layers(ctx, spec_text());
    return std::make_unique<HeadkvWrapState>(std::move(base), *this, ctx);
  }

 private:
  HeadkvParams hp_;
};

}  // namespace

std::unique_ptr<Strategy> make_headkv(ParamReader& p) { return std::make_unique<Headkv>(p); }

std::unique_ptr<Strategy> make_headkv_wrapper(ParamReader& p, std::unique_ptr<Strategy> base) {
  return std::make_unique<HeadkvWrap>(p, std::move(base));
}

}  // namespace kvsim
