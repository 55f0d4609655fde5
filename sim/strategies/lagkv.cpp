// lagkv (Liang et al., "LagKV: Lag-Relative Information of the KV Cache Tells Which Tokens Are
// Important", arXiv 2504.04704; reference code kvpress `lagkv_press.py`). Query-free. Over n held
// tokens in position order: the first `sinks` are kept; the rest from position `sinks` on is cut into
// blocks of `lag`, e = sinks + ⌊(n − sinks)/lag⌋·lag; the last whole block and the remainder past e
// (the tail) are kept. Every other block j is scored against the next block j + 1 as reference:
// per channel min_r, max_r over the reference; x̃ = (x − min_r)/(max_r − min_r); σ_i = the standard
// deviation over channels of x̃_i (unbiased, as torch's std); score = softmax over the block of σ,
// for keys and for values, averaged. The scores are then replaced by their rank within the block
// divided by `lag` (every block loses about the same share), sinks and tail by 1, and the top B are
// kept. Fewer than sinks + 2·lag tokens: the sinks (score 1) and the newest tokens ((i − sinks)/(n −
// sinks)), StreamingLLM. Prefill ranks the prompt once; under protocol evict every step reruns the rule
// on the held slots (the cache in position order) and evicts the lowest. Keys and values are those the
// cache holds (dequantized under a codec). Departures, both where the reference divides by zero: a
// channel whose reference range is 0 contributes x̃ = 0, and D = 1 gives σ = 0. Ties: within a block
// equal scores rank the lower position higher, and equal ranks keep the lower position.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

// softmax over each block of lag of sigma_i, sigma_i = std over channels of x̃_i against the next block.
// rows(i) is token i's key or value [D] (i in position order); adds w * score into out[i - sinks].
template <class RowFn>
void block_scores(int64_t sinks, int64_t lag, int64_t n_blocks, int64_t D, RowFn rows, double w,
                  std::vector<double>& out) {
  std::vector<double> mn(static_cast<size_t>(D)), mx(static_cast<size_t>(D)), sig(static_cast<size_t>(lag));
  for (int64_t j = 0; j + 1 < n_blocks; ++j) {
    const int64_t b0 = sinks + j * lag, r0 = b0 + lag;
    for (int64_t x = 0; x < D; ++x) mn[x] = INFINITY, mx[x] = -INFINITY;
    for (int64_t i = r0; i < r0 + lag; ++i)
      for (int64_t x = 0; x < D; ++x)
        mn[x] = std::min<double>(mn[x], rows(i)[x]), mx[x] = std::max<double>(mx[x], rows(i)[x]);
    double top = -INFINITY;
    for (int64_t i = 0; i < lag; ++i) {
      const float* r = rows(b0 + i);
      double mean = 0, ss = 0;
      std::vector<double> xt(static_cast<size_t>(D));
      for (int64_t x = 0; x < D; ++x) {
        xt[x] = mx[x] > mn[x] ? (r[x] - mn[x]) / (mx[x] - mn[x]) : 0.0;
        mean += xt[x] / static_cast<double>(D);
      }
      for (int64_t x = 0; x < D; ++x) ss += (xt[x] - mean) * (xt[x] - mean);
      sig[i] = D > 1 ? std::sqrt(ss / static_cast<double>(D - 1)) : 0.0;
      top = std::max(top, sig[i]);
    }
    double z = 0;
    for (int64_t i = 0; i < lag; ++i) z += std::exp(sig[i] - top);
    for (int64_t i = 0; i < lag; ++i) out[j * lag + i] += w * std::exp(sig[i] - top) / z;
  }
}

// LagKV's score of each of the n tokens given in position order (keys and values [D] by index).
template <class KeyFn, class ValueFn>
void lagkv_scores(int64_t n, int64_t D, int64_t sinks, int64_t lag, KeyFn key, ValueFn value,
                  std::vector<double>& score) {
  score.assign(static_cast<size_t>(n), 1.0);
  if (n < sinks + 2 * lag) {
    for (int64_t i = sinks; i < n; ++i) score[i] = static_cast<double>(i - sinks) / static_cast<double>(n - sinks);
    return;
  }
  const int64_t n_blocks = (n - sinks) / lag;
  std::vector<double> s(static_cast<size_t>((n_blocks - 1) * lag), 0.0);
  block_scores(sinks, lag, n_blocks, D, key, 0.5, s);
  block_scores(sinks, lag, n_blocks, D, value, 0.5, s);
  std::vector<int64_t> order(static_cast<size_t>(lag));
  for (int64_t j = 0; j + 1 < n_blocks; ++j) {
    const double* b = s.data() + j * lag;
    std::iota(order.begin(), order.end(), 0);
    // Ascending rank; among equal scores the higher position ranks lower (the lower one is kept).
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return b[a] < b[c] || (b[a] == b[c] && a > c); });
    for (int64_t r = 0; r < lag; ++r)
      score[sinks + j * lag + order[r]] = static_cast<double>(r) / static_cast<double>(lag);
  }
}

class LagkvState final : public StrategyState {
 public:
  LagkvState(int64_t B, int64_t sinks, int64_t lag) : B_(B), sinks_(sinks), lag_(lag) {}

  void prefill(std::span<SlotCache> caches, const LayerView&, int64_t P) override { evict(caches, P - 1); }
  void prompt_scores(const SlotCache& c, const LayerView&, int64_t P, PromptScores& out) override {
    rescore(c);
    out.score.assign(static_cast<size_t>(P), 0.0);
    out.forced.assign(static_cast<size_t>(P), 0);
    for (int64_t s = 0; s < c.size(); ++s) out.score[c.pos(s)] = score_[s];
    out.keep = B_;
  }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    SlotCache& c = caches[0];
    if (c.size() <= B_) return;
    rescore(c);
    evict_lowest(c, B_, t, 0, 0, [&](int64_t s) { return score_[s]; });
  }

 private:
  // score_[s] for every slot of c: the rule on the held slots in position order.
  void rescore(const SlotCache& c) {
    const int64_t n = c.size();
    std::vector<int64_t> by_pos(static_cast<size_t>(n));  // slots in position order
    std::iota(by_pos.begin(), by_pos.end(), 0);
    std::sort(by_pos.begin(), by_pos.end(), [&](int64_t a, int64_t b) { return c.pos(a) < c.pos(b); });
    std::vector<double> sc;
    lagkv_scores(
        n, c.D(), sinks_, lag_, [&](int64_t i) { return c.key(by_pos[i]); },
        [&](int64_t i) { return c.value(by_pos[i]); }, sc);
    score_.assign(static_cast<size_t>(n), 0.0);
    for (int64_t i = 0; i < n; ++i) score_[by_pos[i]] = sc[i];
  }

  int64_t B_, sinks_, lag_;
  std::vector<double> score_;  // per slot, this step only
};

class Lagkv final : public Strategy {
 public:
  explicit Lagkv(ParamReader& p) {
    ep_.read(p, {.sinks = 4, .recent = {}, .gqa = false});
    lag_ = p.get_int("lag", 128, IntRange{1, kMaxIntParam});
    set_identity(p);
  }
  bool exposes_prompt_scores() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    return std::make_unique<LagkvState>(ep_.resolve_budget(ctx.T, ctx.P), ep_.sinks, lag_);
  }

 private:
  EvictionParams ep_;
  int64_t lag_ = 128;
};

}  // namespace

std::unique_ptr<Strategy> make_lagkv(ParamReader& p) { return std::make_unique<Lagkv>(p); }

}  // namespace kvsim
