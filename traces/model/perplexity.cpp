#include "traces/model/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include "sim/base/error.h"
#include "sim/instance.h"
#include "traces/model/runner.h"
#include "traces/model/strategy_cache.h"

namespace kvsim::model {

double token_nll(const float* logits, int64_t vocab, int32_t target) {
  double mx = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) mx = std::max(mx, static_cast<double>(logits[i]));
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  return mx + std::log(sum) - static_cast<double>(logits[target]);
}

GreedyAgreement greedy_agreement(const PerplexityResult& full, const PerplexityResult& r) {
  KVSIM_ASSERT(full.argmax.size() == r.argmax.size() && full.P == r.P);
  GreedyAgreement g;
  int64_t same = 0;
  for (size_t i = 0; i < r.argmax.size(); ++i) {
    if (r.argmax[i] == full.argmax[i])
      ++same;
    else if (g.first_divergence < 0)
      g.first_divergence = r.P + static_cast<int64_t>(i);
  }
  g.fraction = r.argmax.empty() ? 1.0 : static_cast<double>(same) / static_cast<double>(r.argmax.size());
  return g;
}

PerplexityResult perplexity(const Model& model, std::span<const int32_t> ids, int64_t P, const Strategy* strategy,
                            Backend backend, const std::function<void(int64_t)>& progress, Protocol protocol) {
  const ModelConfig& c = model.config;
  const int64_t T = static_cast<int64_t>(ids.size());
  check_prefill(T, P);
  if (T > c.seq_len)
    throw UsageError(c.name + ": " + std::to_string(T) +
                     " tokens exceed the context length seq_len = " + std::to_string(c.seq_len));
  for (int64_t t = 0; t < T; ++t)
    if (ids[t] < 0 || ids[t] >= c.vocab_size)
      throw UsageError(c.name + ": token id " + std::to_string(ids[t]) + " at position " + std::to_string(t) +
                       " is outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
  PerplexityResult r;
  if (strategy) r.strategy = strategy->name(), r.spec = strategy->spec_text(), r.params = strategy->params();
  r.T = T, r.P = P, r.n_predicted = T - P;

  std::unique_ptr<StrategyCaches> caches;
  if (strategy) caches = std::make_unique<StrategyCaches>(*strategy, c, T, P, backend, protocol, &model);
  Runner runner(model, backend, caches ? caches->factory() : full_cache_factory());
  const auto t0 = std::chrono::steady_clock::now();
  const float* logits = runner.forward(ids.data(), P);
  if (progress) progress(P);
  double sum = 0;
  r.token_nll.reserve(static_cast<size_t>(T - P)), r.argmax.reserve(static_cast<size_t>(T - P));
  for (int64_t t = P; t < T; ++t) {
    const double nll = token_nll(logits, c.vocab_size, ids[t]);  // logits of position t-1 predict x_t
    sum += nll;
    r.token_nll.push_back(nll);
    r.argmax.push_back(static_cast<int32_t>(std::max_element(logits, logits + c.vocab_size) - logits));
    logits = runner.forward(&ids[t], 1);
    if (progress) progress(1);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.nll = sum / static_cast<double>(T - P);
  r.ppl = std::exp(r.nll);
  if (caches) {
    KVSIM_ASSERT(caches->decode_steps() == T - P);
    r.mean_ratio = caches->mean_ratio();
  }
  return r;
}

}  // namespace kvsim::model
