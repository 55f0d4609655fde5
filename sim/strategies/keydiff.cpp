// keydiff (Park et al., "KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context LLM
// Inference in Resource-Constrained Environments", arXiv 2504.15364; reference code kvpress
// `keydiff_press.py` inside `block_press.py`). Query-free: keys that point away from the mean key
// direction are the distinctive ones. Over a set of held keys, the anchor is the mean of the
// normalised keys, a = mean_i k_i / |k_i|, and score_i = -cos(k_i, a); the lowest scores go.
// Prefill (the paper's BlockPress): keep the first B prompt tokens, then for each next block of
// `block` prompt tokens rescore kept ∪ block (anchor over that set) and keep its top B. Decode
// (protocol evict): every step is a block of one token: rescore the held slots and evict the lowest.
// Scores use the keys as the cache holds them (dequantized under a codec); nothing is kept between
// steps, so `bytes` is the codec's alone.
#include <algorithm>
#include <cmath>
#include <vector>

#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

// score[j] = -cos(key(j), anchor) over the n keys, anchor = mean of the normalised keys.
template <class KeyFn>
void keydiff_scores(int64_t n, int64_t D, KeyFn key, std::vector<double>& score) {
  std::vector<double> anchor(static_cast<size_t>(D), 0.0), norm(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    const float* k = key(j);
    double s = 0;
    for (int64_t x = 0; x < D; ++x) s += static_cast<double>(k[x]) * k[x];
    norm[j] = std::sqrt(s);
    const double inv = 1.0 / std::max(norm[j], 1e-12);  // F.normalize's eps
    for (int64_t x = 0; x < D; ++x) anchor[x] += k[x] * inv / static_cast<double>(n);
  }
  double an = 0;
  for (int64_t x = 0; x < D; ++x) an += anchor[x] * anchor[x];
  an = std::sqrt(an);
  score.assign(static_cast<size_t>(n), 0.0);
  for (int64_t j = 0; j < n; ++j) {
    const float* k = key(j);
    double dot = 0;
    for (int64_t x = 0; x < D; ++x) dot += k[x] * anchor[x];
    score[j] = -dot / std::max(norm[j] * an, 1e-8);  // F.cosine_similarity's eps
  }
}

class KeydiffState final : public StrategyState {
 public:
  KeydiffState(int64_t B, int64_t sinks, int64_t recent, int64_t block)
      : B_(B), sinks_(sinks), recent_(recent), block_(block) {}

  void prefill(std::span<SlotCache> caches, const LayerView&, int64_t P) override {
    SlotCache& c = caches[0];
    if (c.size() <= B_) return;
    std::vector<int64_t> slot_of(static_cast<size_t>(P), -1);
    for (int64_t s = 0; s < c.size(); ++s) slot_of[c.pos(s)] = s;
    std::vector<int32_t> kept;
    for (int32_t p = 0; p < B_; ++p) kept.push_back(p);
    std::vector<double> score;
    for (int64_t start = B_; start < P; start += block_) {
      std::vector<int32_t> cand = kept;
      for (int64_t p = start; p < std::min(P, start + block_); ++p) cand.push_back(static_cast<int32_t>(p));
      const int64_t n = static_cast<int64_t>(cand.size());
      keydiff_scores(
          n, c.D(), [&](int64_t j) { return c.key(slot_of[cand[j]]); }, score);
      std::vector<int64_t> order(static_cast<size_t>(n));
      for (int64_t j = 0; j < n; ++j) order[j] = j;
      // Protected tokens first, then the kvsim tie rule (higher score, then lower position).
      auto rank = [&](int64_t j) { return is_protected(cand[j], P - 1, sinks_, recent_) ? INFINITY : score[j]; };
      std::partial_sort(order.begin(), order.begin() + B_, order.end(),
                        [&](int64_t a, int64_t b) { return keep_before(rank(a), cand[a], rank(b), cand[b]); });
      kept.clear();
      for (int64_t j = 0; j < B_; ++j) kept.push_back(cand[order[j]]);
    }
    std::vector<uint8_t> keep(static_cast<size_t>(c.size()), 0);
    for (int32_t p : kept) keep[slot_of[p]] = 1;
    c.remove_unless(keep);
  }
  // Under an allocator: one pass over the whole prompt (kvpress's KeyDiffPress.score; the block
  // schedule above is the standalone prefill).
  void prompt_scores(const SlotCache& c, const LayerView&, int64_t P, PromptScores& out) override {
    keydiff_scores(
        c.size(), c.D(), [&](int64_t s) { return c.key(s); }, score_);
    out.score.assign(static_cast<size_t>(P), 0.0);
    out.forced.assign(static_cast<size_t>(P), 0);
    for (int64_t s = 0; s < c.size(); ++s) {
      out.score[c.pos(s)] = score_[s];
      out.forced[c.pos(s)] = is_protected(c.pos(s), P - 1, sinks_, recent_);
    }
    out.keep = B_;
  }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    SlotCache& c = caches[0];
    if (c.size() <= B_) return;
    keydiff_scores(
        c.size(), c.D(), [&](int64_t s) { return c.key(s); }, score_);
    evict_lowest(c, B_, t, sinks_, recent_, [&](int64_t s) { return score_[s]; });
  }

 private:
  int64_t B_, sinks_, recent_, block_;
  std::vector<double> score_;  // per slot, this step only
};

class Keydiff final : public Strategy {
 public:
  explicit Keydiff(ParamReader& p) {
    ep_.read(p, {.sinks = 0, .recent = 0, .gqa = false});
    block_ = p.get_int("block", 128, IntRange{1, kMaxIntParam});
    set_identity(p);
  }
  bool exposes_prompt_scores() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    const int64_t B = ep_.resolve_budget(ctx.T, ctx.P);
    return std::make_unique<KeydiffState>(B, ep_.sinks, ep_.resolve_recent(B), block_);
  }

 private:
  EvictionParams ep_;
  int64_t block_ = 128;
};

}  // namespace

std::unique_ptr<Strategy> make_keydiff(ParamReader& p) { return std::make_unique<Keydiff>(p); }

}  // namespace kvsim
