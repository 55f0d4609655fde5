// Budget allocators: wrappers around a scorer, spelled WRAPPER.BASE with the parameters shared
// (`adakv.snapkv:budget=64,alpha=0.2`, `chunkkv.h2o:budget=64`; STRATEGIES.md, "Budget allocators").
// An allocator is layer-coupled: one state per layer holds one state of the base per KV head, asks
// each for the scores it would cut the prompt by (StrategyState::prompt_scores), decides which prompt
// tokens each head keeps (AllocatorState::choose), and cuts. Head h then holds its own budget B_h,
// the slots it kept: under protocol prefill every later token is appended; under protocol evict the
// chosen prompt tokens stay and the other slots (the base's forced window or recent tokens, then
// every new token) slide over the newest tokens, the oldest going first (SnapKV's "selected tokens +
// sliding window"), so a head never holds more than B_h slots.
// Bytes count what each head really holds; when the heads' budgets differ the cache is the
// flattened variable-length layout of ../shared/methods.md §1.3, which adds one 4-byte length per
// head (state_bytes). The base's own decode rule does not run after the cut.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "sim/base/spec.h"
#include "sim/strategies/strategy.h"

namespace kvsim {

class AllocatorState : public VarlenState {
 public:
  explicit AllocatorState(std::vector<std::unique_ptr<StrategyState>> base) : base_(std::move(base)) {}
  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) final;
  void evict(std::span<SlotCache> caches, int64_t t) final;
  // The budget head h holds after the cut (its kept prompt tokens, forced ones included).
  int64_t head_budget(int64_t h) const { return budget_[static_cast<size_t>(h)]; }

 protected:
  // The layer being cut, valid inside choose() (criticalkv reads its vo_norm).
  const LayerView& view() const { return *lv_; }
  // Given each head's PromptScores (the base's keep < P in at least one head), sets keep[h][i] = 1
  // for the prompt tokens i < P head h keeps.
  virtual void choose(std::vector<PromptScores>& ps, int64_t P, std::vector<std::vector<uint8_t>>& keep) = 0;

 private:
  std::vector<std::unique_ptr<StrategyState>> base_;  // [Hkv]
  std::vector<int64_t> budget_;                       // [Hkv] B_h
  std::vector<std::vector<uint8_t>> kept_;            // [Hkv][P] chosen prompt tokens (permanent)
  const LayerView* lv_ = nullptr;
};

// The order of design.md §3 (higher score, then lower position) over one head's prompt positions,
// forced ones first: order[0] is the best.
std::vector<int32_t> rank_positions(const PromptScores& ps);

class Allocator : public Strategy {
 public:
  // Reads nothing itself: the derived class reads its parameters from `p`, then calls finish_init.
  Allocator(const std::string& wrapper, std::unique_ptr<Strategy> base);
  bool layer_coupled() const override { return true; }
  bool needs_prompt_colsums() const override { return base_->needs_prompt_colsums(); }
  bool needs_entropy() const override { return base_->needs_entropy(); }
  bool needs_pre_rope() const override { return base_->needs_pre_rope(); }
  bool needs_q_pre() const override { return base_->needs_q_pre(); }
  bool needs_vo_norm() const override { return base_->needs_vo_norm(); }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const final;

 protected:
  void finish_init(ParamReader& p) { set_identity(p); }
  virtual std::unique_ptr<AllocatorState> make_allocator(std::vector<std::unique_ptr<StrategyState>> base,
                                                         const InstanceContext& ctx) const = 0;
  std::unique_ptr<Strategy> base_;
};

// A wrapper's factory: reads its own parameters from `p` and wraps `base` (built from the same p).
std::unique_ptr<Strategy> make_adakv(ParamReader& p, std::unique_ptr<Strategy> base);
std::unique_ptr<Strategy> make_chunkkv(ParamReader& p, std::unique_ptr<Strategy> base);
std::unique_ptr<Strategy> make_criticalkv(ParamReader& p, std::unique_ptr<Strategy> base);
std::unique_ptr<Strategy> make_headkv_wrapper(ParamReader& p, std::unique_ptr<Strategy> base);  // headkv.cpp
using WrapperFactory = std::unique_ptr<Strategy> (*)(ParamReader&, std::unique_ptr<Strategy>);
// AdaKV's kvpress form (adakv.BASE:form=kvpress; criticalkv's heads=adakv budgets): keep[h][i] = 1 for
// head h's top int(n_kept·alpha) and forced tokens, then for the layer's best of the rest so that the
// layer holds Hkv·n_kept (n_kept = min(ps[0].keep, P)); the higher score, position, head first.
void adakv_kvpress_keep(const std::vector<PromptScores>& ps, int64_t P, double alpha,
                        std::vector<std::vector<uint8_t>>& keep);
// The wrappers by name: adakv, chunkkv, criticalkv, headkv; nullptr for another name.
WrapperFactory find_wrapper(const std::string& name);
// The wrappers' names, for listings: {"adakv", "chunkkv", "criticalkv", "headkv"}.
std::vector<std::string> allocator_names();

}  // namespace kvsim
