#include "sim/strategies/evict.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "sim/base/error.h"

namespace kvsim {

void EvictionParams::read(ParamReader& p, const EvictionParamDefaults& takes) {
  spec = p.spec().text;
  bool hb = p.has("budget"), hr = p.has("ratio"), hp = p.has("press_ratio");
  if (hb && takes.budget_none && p.spec().params.at("budget") == "none") {
    p.set_resolved("budget", "none");
    if (hr || hp) throw UsageError("strategy '" + spec + "': budget=none takes neither ratio= nor press_ratio=");
    no_budget = true;
    hb = false;
  }
  if (!no_budget && int(hb) + int(hr) + int(hp) != 1)
    throw UsageError("strategy '" + spec + "': give exactly one of budget=SLOTS" +
                     (takes.budget_none ? std::string("|none") : std::string()) +
                     ", ratio=FRACTION_OF_T or press_ratio=FRACTION_OF_P_REMOVED");
  if (no_budget) {
    // budget=none: nothing is evicted
  } else if (hb) {
    budget = p.get_int("budget", 0, IntRange{1, kMaxIntParam});
  } else if (hp) {
    press_ratio = p.get_double("press_ratio", 0);
    if (!(press_ratio >= 0 && press_ratio < 1))
      throw UsageError("strategy '" + spec + "': press_ratio=" + p.resolved().at("press_ratio") +
                       " must be in [0, 1) (the fraction of the prompt removed)");
  } else {
    ratio = p.get_double("ratio", 0);
    if (!(ratio > 0 && ratio <= 1))
      throw UsageError("strategy '" + spec + "': ratio=" + p.resolved().at("ratio") + " must be in (0, 1]");
  }
  if (takes.sinks) {
    sinks = p.get_int("sinks", *takes.sinks);
  }
  if (takes.recent) {
    recent = p.get_int("recent", *takes.recent, IntRange{-1, kMaxIntParam});  // -1: half the budget
    if (recent == -1) p.set_resolved("recent", "budget/2");
  }
  if (takes.gqa_none)
    gqa = parse_gqa(p.get_choice("gqa", {"mean", "max", "sum", "none"}));
  else if (takes.gqa)
    gqa = parse_gqa(p.get_choice("gqa", {"mean", "max", "sum"}));
  if (budget > 0) resolve_budget(budget, 0);  // validates sinks + recent against a slot budget now
}

int64_t EvictionParams::resolve_budget(int64_t T, int64_t P) const {
  if (no_budget) return kNoBudget;
  int64_t B = budget > 0 ? budget : std::max<int64_t>(1, std::llround(ratio * static_cast<double>(T)));
  // kvpress: n_kept = int(P * (1 - compression_ratio)), truncated (scorer_press.py).
  if (press_ratio >= 0) B = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(P) * (1.0 - press_ratio)));
  int64_t r = resolve_recent(B);
  if (B <= sinks + r)
    throw UsageError("strategy '" + spec + "': budget " + std::to_string(B) +
                     " must exceed sinks + recent = " + std::to_string(sinks) + " + " + std::to_string(r));
  return B;
}

void evict_positions(SlotCache& cache, const std::vector<int32_t>& positions) {
  if (positions.empty()) return;
  std::unordered_set<int32_t> drop(positions.begin(), positions.end());
  std::vector<uint8_t> keep(cache.size(), 1);
  for (int64_t s = 0; s < cache.size(); ++s)
    if (drop.count(cache.pos(s))) keep[s] = 0;
  cache.remove_unless(keep);
}

void prompt_attention_rows(const LayerView& lv, const HeadGroup& grp, int64_t P, int64_t j0, int64_t j1, Gqa how,
                           std::vector<float>& rows) {
  const int64_t G = grp.n, D = lv.D, nq = j1 - j0;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  rows.assign(nq * P, 0.0f);
  std::vector<double> z(P);
  std::vector<float> per_g(G * P);
  const float* kk = lv.k_head(grp.kv);
  for (int64_t j = j0; j < j1; ++j) {
    std::fill(per_g.begin(), per_g.end(), 0.0f);
    for (int64_t g = 0; g < G; ++g) {
      const float* q = lv.q_head(grp.q0 + g) + j * D;
      double mx = -INFINITY;
      for (int64_t i = 0; i <= j; ++i) {
        float d = 0;
        for (int64_t x = 0; x < D; ++x) d += q[x] * kk[i * D + x];
        z[i] = d * scale;
        mx = std::max(mx, z[i]);
      }
      double sum = 0;
      for (int64_t i = 0; i <= j; ++i) sum += (z[i] = std::exp(z[i] - mx));
      for (int64_t i = 0; i <= j; ++i) per_g[g * P + i] = static_cast<float>(z[i] / sum);
    }
    combine_gqa(per_g.data(), G, P, how, rows.data() + (j - j0) * P);
  }
}

void combined_prompt_colsums(const LayerView& lv, const HeadGroup& grp, int64_t P, Gqa how, float* out) {
  if (how != Gqa::max) {
    KVSIM_ASSERT(lv.prompt_colsums != nullptr);
    combine_gqa(lv.prompt_colsums + grp.q0 * P, grp.n, P, how, out);
    return;
  }
  std::vector<double> acc(static_cast<size_t>(P), 0.0);
  std::vector<float> rows;
  constexpr int64_t kBlock = 64;  // prompt queries per block: rows of [kBlock, P] at a time
  for (int64_t j0 = 0; j0 < P; j0 += kBlock) {
    const int64_t j1 = std::min(P, j0 + kBlock);
    prompt_attention_rows(lv, grp, P, j0, j1, how, rows);
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t i = 0; i <= j; ++i) acc[static_cast<size_t>(i)] += rows[(j - j0) * P + i];
  }
  for (int64_t i = 0; i < P; ++i) out[i] = static_cast<float>(acc[static_cast<size_t>(i)]);
}

void AccumulatedAttention::start(const LayerView& lv, int64_t P) {
  combined_prompt_colsums(lv, grp_, P, gqa_, tmp_.data());
  for (int64_t i = 0; i < P; ++i) score_[static_cast<size_t>(i)] = tmp_[static_cast<size_t>(i)];
}

void AccumulatedAttention::add(const SlotCache& cache, const float* attn, bool view0_only) {
  // A cache may hold more slots than the T tokens (cms_aggregate's d x w sketch buckets are slots).
  if (tmp_.size() < static_cast<size_t>(cache.size())) tmp_.resize(static_cast<size_t>(cache.size()));
  combine_gqa(attn, grp_.n, cache.size(), gqa_, tmp_.data());
  for (int64_t s = 0; s < cache.size(); ++s)
    if (!view0_only || cache.view(s) == 0) score_[static_cast<size_t>(cache.pos(s))] += tmp_[static_cast<size_t>(s)];
}

}  // namespace kvsim
