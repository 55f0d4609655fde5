// Building blocks shared by eviction strategies: the common parameters (budget or ratio, sinks,
// recent, gqa), protection of sinks and recent tokens, and "evict the lowest-scored slots" with the
// one tie-break rule of design.md §3 (keep the higher score, then the lower position).
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sim/base/spec.h"
#include "sim/strategies/slot.h"
#include "sim/strategies/strategy.h"

namespace kvsim {

// The common eviction parameters a strategy takes, with its defaults (EvictionParams::read). An
// empty default means the strategy does not take that parameter (giving it is then an error).
struct EvictionParamDefaults {
  std::optional<int64_t> sinks;   // `sinks`: protected first tokens
  std::optional<int64_t> recent;  // `recent`: protected newest tokens (-1: half the budget)
  bool gqa = false;               // `gqa = mean | max | sum`
  bool gqa_none = false;          // also `gqa = none` (one cache per query head)
  bool budget_none = false;       // also `budget = none` (no budget: nothing is evicted)
};

struct EvictionParams {
  int64_t budget = -1;      // slots, or -1 when given as a ratio (or budget=none)
  bool no_budget = false;   // budget=none (where the strategy takes it): resolve_budget gives kNoBudget
  double ratio = -1;        // of the sequence length T
  double press_ratio = -1;  // kvpress's compression_ratio: the fraction of the prompt P removed
  int64_t sinks = 0;        // protected first tokens
  int64_t recent = 0;       // protected newest tokens; -1: half the budget
  Gqa gqa = Gqa::mean;
  std::string spec;

  // Reads budget|ratio (exactly one required), and sinks / recent / gqa where `takes` has them:
  // read(p, {.sinks = 4, .recent = -1, .gqa = true}).
  void read(ParamReader& p, const EvictionParamDefaults& takes);
  // Budget in slots for a sequence of T tokens with prefill P (budget, round(ratio T), or
  // int(P (1 - press_ratio)) as kvpress counts it); throws UsageError if it is not > sinks + recent.
  // kNoBudget with budget=none.
  int64_t resolve_budget(int64_t T, int64_t P) const;
  static constexpr int64_t kNoBudget = INT64_MAX / 4;
  int64_t resolve_recent(int64_t B) const { return recent < 0 ? B / 2 : recent; }
};

inline bool is_protected(int32_t pos, int64_t t, int64_t sinks, int64_t recent) {
  return pos < sinks || pos > t - recent;
}

// a is a better slot to keep than b: higher score, then lower position.
inline bool keep_before(double sa, int32_t pa, double sb, int32_t pb) { return sa > sb || (sa == sb && pa < pb); }

// Evicts slots of `cache` until it holds at most `B`, lowest score(slot) first, never a slot with
// is_protected(pos, t, sinks, recent). If `at_least` > size - B, evicts that many instead.
template <class ScoreFn>
void evict_lowest(SlotCache& cache, int64_t B, int64_t t, int64_t sinks, int64_t recent, ScoreFn score,
                  int64_t at_least = 0);

// Evicts exactly the slots whose representative positions are in `positions` (those present).
void evict_positions(SlotCache& cache, const std::vector<int32_t>& positions);

// Attention rows of prompt queries j in [j0, j1) of the query heads of `grp` over keys 0..j
// (causal), each row combined over the group by `how` (combine_gqa), written into
// rows[(j - j0) * P + i] for i <= j (0 past j).
void prompt_attention_rows(const LayerView& lv, const HeadGroup& grp, int64_t P, int64_t j0, int64_t j1, Gqa how,
                           std::vector<float>& rows /* [j1 - j0, P] */);

// The prompt's attention to token i, i < P, in the one GQA order (strategy.h, Gqa): out[i] =
// sum over prompt queries j >= i of combine_g P^g_{j,i}. For mean and sum this is, by linearity, the
// combination of the per-head column sums lv.prompt_colsums (read from there); for max the rows are
// recomputed from the prompt's q and k (prompt_attention_rows).
void combined_prompt_colsums(const LayerView& lv, const HeadGroup& grp, int64_t P, Gqa how, float* out /* [P] */);

// SnapKV's pooling of the window's votes (sim/strategies/snapkv.cpp): max, avg as the reference code
// (zero padding, divided by the kernel), or avg_clipped (divided by the neighbours in range).
enum class SnapPool { max, avg, avg_clipped };

// pooled[i] over votes[0..n): a centred window of `kernel` (odd) neighbours, as above.
void pool_votes(const std::vector<double>& votes, int64_t kernel, SnapPool pool, std::vector<double>& pooled);

// SnapKV's pooled votes pooled[i], i < P - min(window, P): the window's attention on each prompt
// token before the window, combined and pooled as snapkv_heavy describes.
void snapkv_votes(const LayerView& lv, const HeadGroup& grp, int64_t P, int64_t window, int64_t kernel, SnapPool pool,
                  Gqa gqa, std::vector<double>& pooled);

// SnapKV's choice: votes of the last w = min(window, P) prompt queries on each prompt token before
// the window (their causal attention summed over the window, each row combined over the query heads
// of `grp` by `gqa`), pooled over `kernel` neighbours (centred), the `keep` best of positions
// 0..P-w-1, ties to the lower (snapkv, pyramidkv, rocketkv's stage 1).
std::vector<int32_t> snapkv_heavy(const LayerView& lv, const HeadGroup& grp, int64_t P, int64_t window, int64_t kernel,
                                  SnapPool pool, Gqa gqa, int64_t keep);

// Accumulated attention per position (h2o and kin): started from the prompt's own attention
// (combined_prompt_colsums) and grown by each step's attention over the slots, combined over the
// query heads of `grp` by `gqa`. A slot's score lives at its representative position.
class AccumulatedAttention {
 public:
  AccumulatedAttention(int64_t T, const HeadGroup& grp, Gqa gqa)
      : grp_(grp), gqa_(gqa), score_(static_cast<size_t>(T), 0.0), tmp_(static_cast<size_t>(T)) {}
  // score[i] = the prompt's combined column sum, i < P (lv.prompt_colsums must be set).
  void start(const LayerView& lv, int64_t P);
  // Adds attn [G, n] over the slots of `cache`; only slots whose view is 0 when `view0_only`.
  void add(const SlotCache& cache, const float* attn, bool view0_only = false);
  double& operator[](int32_t pos) { return score_[static_cast<size_t>(pos)]; }
  double operator[](int32_t pos) const { return score_[static_cast<size_t>(pos)]; }

 private:
  HeadGroup grp_;
  Gqa gqa_;
  std::vector<double> score_;
  std::vector<float> tmp_;
};

// ---------------------------------------------------------------------------------------------
template <class ScoreFn>
void evict_lowest(SlotCache& cache, int64_t B, int64_t t, int64_t sinks, int64_t recent, ScoreFn score,
                  int64_t at_least) {
  int64_t n_evict = std::max(cache.size() - B, at_least);
  if (n_evict <= 0) return;
  if (n_evict == 1) {
    int64_t worst = -1;
    double ws = 0;
    for (int64_t s = 0; s < cache.size(); ++s) {
      int32_t p = cache.pos(s);
      if (is_protected(p, t, sinks, recent)) continue;
      double sc = score(s);
      if (worst < 0 || keep_before(ws, cache.pos(worst), sc, p)) worst = s, ws = sc;
    }
    if (worst >= 0) cache.remove(worst);
    return;
  }
  struct Cand {
    double score;
    int32_t pos;
    int64_t slot;
  };
  std::vector<Cand> c;
  c.reserve(cache.size());
  for (int64_t s = 0; s < cache.size(); ++s)
    if (!is_protected(cache.pos(s), t, sinks, recent)) c.push_back({score(s), cache.pos(s), s});
  n_evict = std::min<int64_t>(n_evict, static_cast<int64_t>(c.size()));
  auto worse = [](const Cand& a, const Cand& b) { return keep_before(b.score, b.pos, a.score, a.pos); };
  std::nth_element(c.begin(), c.begin() + (n_evict - 1), c.end(), worse);
  std::vector<uint8_t> keep(cache.size(), 1);
  for (int64_t i = 0; i < n_evict; ++i) keep[c[i].slot] = 0;
  cache.remove_unless(keep);
}

}  // namespace kvsim
