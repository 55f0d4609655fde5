// A kvsim cache strategy owning the live model runner's KV cache (`kvsim ppl`), with the replay's
// semantics (design.md §3) step for step:
//   prefill  the prompt's P tokens enter in one forward call; its attention runs over the exact full
//            cache (KvCache::view() shows the exact prompt, as the replay's reference does), the
//            tokens are stored through the strategy's codec, and once the layer's queries are known
//            the strategy's prefill compresses, handed a LayerView of the prompt's q, k, v
//            (head-major) with k_norm, entropy and prompt_colsums computed by the reference kernels
//            (compute_exact_stats, compute_prompt_colsums) of the runner's backend;
//   decode   one token t >= P per forward call: codec store of (k_t, v_t) -> attention of the G
//            query heads over the slots with attend_slots (slot bias, alternative views) ->
//            observe(weights) -> evict, the last two once every KV head of the layer has attended
//            (one state per layer for layer-coupled strategies such as tova).
// Per-token inputs of decode tokens are those of the live run: k_norm from the live key, and, for a
// strategy that reads entropy (entropy_merge), the exact entropy of the token's own live query over
// the live keys of positions 0..t (kept beside the cache for that purpose only; not counted in bytes),
// and, for a strategy that needs_queries (rkv), the live query of token t from step t on (the
// strategy counts the rows it keeps in its own state bytes). A strategy that needs_vo_norm
// (criticalkv) is handed the prompt's ||W_o,h v_i||_1 computed at prefill from the model's o_proj
// (traces/model/vo_norm.h, as `kvsim record --record vo_norm` writes it), so the weights must be given.
// A strategy that plans across layers (needs_model_plan: cake) profiles each layer at the end of the
// prompt's forward pass and cuts it at the first decode token, when every layer has been profiled:
// the prompt's forward pass never reads the cut cache, so this is the replay's order.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "sim/base/kv_cache.h"
#include "sim/instance.h"
#include "sim/kernels/backend.h"
#include "sim/strategies/strategy.h"
#include "traces/model/model.h"

namespace kvsim::model {

class StrategyLayer;  // one layer's instances (strategy_cache.cpp)
struct PlanBoard;     // the cross-layer plan (strategy_cache.cpp)

// Called at every decode step of every instance after attention, before observe and evict: the
// point where the offline replay measures (ReplayOptions::on_step). For tests; empty: none.
using StepHook = std::function<void(int64_t layer, const Instance& inst, int64_t t)>;

// Throws UsageError when `strategy` cannot run on a sequence of T tokens with prefill P for this
// model (a budget that does not fit, a codec group that does not divide D, vo_norm without `weights`),
// before any work.
void check_strategy_fits(const Strategy& strategy, const ModelConfig& config, int64_t T, int64_t P,
                         Protocol protocol = Protocol::evict, const Model* weights = nullptr);

// The caches of every (layer, KV head) of one sequence of T tokens with prefill P. Hand factory()
// to a Runner (this object must outlive it), run forward(ids, P), then forward(&id, 1) for each
// decode token. clear() (Runner::reset) starts a new sequence with fresh states.
class StrategyCaches {
 public:
  // `weights`: the model whose o_proj gives vo_norm (needed only by a strategy that needs_vo_norm).
  StrategyCaches(const Strategy& strategy, const ModelConfig& config, int64_t T, int64_t P, Backend backend,
                 Protocol protocol = Protocol::evict, const Model* weights = nullptr);
  ~StrategyCaches();
  KvCacheFactory factory();

  // Mean over (layer, KV head, decode step) of the replay's `ratio`: (codec bytes + strategy state
  // bytes) / (4 D (t+1)), measured at attention time of step t, before observe and evict.
  double mean_ratio() const;
  int64_t decode_steps() const;  // decode steps attended so far
  void set_step_hook(StepHook hook) { hook_ = std::move(hook); }

 private:
  const Strategy& strategy_;
  const ModelConfig& config_;
  int64_t T_, P_;
  Backend backend_;
  Protocol protocol_;
  const Model* weights_;
  StepHook hook_;
  std::vector<std::shared_ptr<StrategyLayer>> layers_;  // [L]
  std::unique_ptr<PlanBoard> board_;                    // when the strategy needs_model_plan
};

}  // namespace kvsim::model
