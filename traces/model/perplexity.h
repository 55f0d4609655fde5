// Perplexity with a cache strategy managing the live model's KV cache (`kvsim ppl`): the online
// counterpart of the offline replay, on the same tokens and prefill, so the two can be compared.
//
// Semantics. Token ids x_0..x_{T-1}, prefill P (1 <= P < T), T <= the context length.
//   1. The prompt x_0..x_{P-1} runs in one forward call over the exact full cache; then the
//      strategy's prefill compresses each layer's cache (traces/model/strategy_cache.h).
//   2. Each x_t, t = P..T-1, runs alone at position t: design.md §3's decode step (codec store ->
//      attention over the strategy's slots -> observe -> evict), in every layer.
//   3. The predicted tokens are x_P..x_{T-1}: x_t is scored by the logits of position t-1,
//        nll = -(1 / (T-P)) sum_{t=P}^{T-1} log softmax(logits_{t-1})[x_t],   ppl = exp(nll),
//      natural log, softmax in double. logits_{P-1} come from the prompt (the same for every
//      strategy); logits_{P..T-2} from decode steps whose attention used the strategy's cache. The
//      last token x_{T-1} also runs (its logits predict nothing) so that the decode steps are exactly
//      the replay's t = P..T-1.
//   4. ratio: the replay's `ratio` metric (design.md §4) measured live: per (layer, KV head,
//      decode step t), (codec bytes + strategy state bytes) / (4 D (t+1)) at attention time,
//      averaged over all of them: `kvsim run --prefill P` on a trace of the same ids reports the
//      same mean wherever the strategy's slot count does not depend on the data.
//   5. Per predicted token t (index t - P): its nll and the argmax of logits_{t-1} (the greedy
//      prediction at that position; ties to the lower id), for key-token perplexity and greedy
//      agreement (greedy_agreement below, `kvsim ppl --per-token`, `kvsim validate`).
// Without a strategy the plain runner with its FullKvCache runs the same schedule (ratio 1).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "sim/kernels/backend.h"
#include "sim/strategies/strategy.h"
#include "traces/model/model.h"

namespace kvsim::model {

struct PerplexityResult {
  std::string strategy = "full", spec = "full";  // name and spec text ("full": no strategy given)
  std::map<std::string, std::string> params;
  int64_t T = 0, P = 0, n_predicted = 0;  // n_predicted = T - P
  double nll = 0;                         // mean negative log-likelihood (nats per predicted token)
  double ppl = 0;                         // exp(nll)
  double mean_ratio = 1;                  // see 4. above
  double seconds = 0;
  std::vector<double> token_nll;  // [T - P] per predicted token x_t, t = P..T-1 (see 5.)
  std::vector<int32_t> argmax;    // [T - P] argmax of logits_{t-1}
};

// Greedy agreement of a run with the full cache's: the fraction of predicted positions whose argmax
// equals full's, and the first position t (P..T-1) where they differ, -1 when none.
struct GreedyAgreement {
  double fraction = 1;
  int64_t first_divergence = -1;
};
GreedyAgreement greedy_agreement(const PerplexityResult& full, const PerplexityResult& r);

// -log softmax(logits)[target], in double.
double token_nll(const float* logits, int64_t vocab, int32_t target);

// Runs the schedule above. strategy == nullptr: the plain runner's full cache. progress, if set, is
// called after each forward call with the tokens it ran. Throws UsageError for P outside [1, T),
// T beyond the context, an id outside the vocabulary, or a strategy that does not fit.
PerplexityResult perplexity(const Model& model, std::span<const int32_t> ids, int64_t P, const Strategy* strategy,
                            Backend backend, const std::function<void(int64_t)>& progress = {},
                            Protocol protocol = Protocol::evict);

}  // namespace kvsim::model
