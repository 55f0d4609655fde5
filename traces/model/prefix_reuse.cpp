#include "traces/model/prefix_reuse.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

#include "sim/base/error.h"
#include "sim/strategies/slot.h"
#include "traces/model/perplexity.h"
#include "traces/model/runner.h"

namespace kvsim::model {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

int32_t argmax(const float* logits, int64_t vocab) {
  return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
}

// Per (layer, KV head): keys and values [n, D] of positions 0..n-1 of the runner's full caches.
struct PrefixKv {
  std::vector<std::vector<float>> k, v;
};

PrefixKv keep_prefix(Runner& r, int64_t n) {
  const ModelConfig& c = r.model().config;
  PrefixKv kv;
  for (int64_t l = 0; l < c.n_layers; ++l)
    for (int64_t g = 0; g < c.n_kv_heads; ++g) {
      const KvView view = r.cache(l, g).view();
      KVSIM_ASSERT(view.n >= n);
      kv.k.emplace_back(view.k, view.k + n * c.head_dim);
      kv.v.emplace_back(view.v, view.v + n * c.head_dim);
    }
  return kv;
}

// The prefix as the codec gives it back: stored token by token, read from the slots.
PrefixKv through_codec(const PrefixKv& exact, int64_t n, int64_t D, const Codec& codec) {
  PrefixKv out = exact;
  for (size_t i = 0; i < exact.k.size(); ++i) {
    auto state = codec.make_state(D, n);
    SlotCache cache(D, n);
    for (int64_t t = 0; t < n; ++t)
      state->store(cache, static_cast<int32_t>(t), exact.k[i].data() + t * D, exact.v[i].data() + t * D);
    for (int64_t s = 0; s < cache.size(); ++s) {
      const int64_t t = cache.pos(s);
      std::copy(cache.key(s), cache.key(s) + D, out.k[i].begin() + t * D);
      std::copy(cache.value(s), cache.value(s) + D, out.v[i].begin() + t * D);
    }
  }
  return out;
}

struct Continuation {
  std::vector<int32_t> argmax;
  std::vector<double> nll;  // of the uncached run's greedy tokens
  std::vector<std::vector<float>> logits;
};

// From the prompt's last logits: N positions, running `tokens` (the greedy ones when empty: their
// own argmax) one at a time.
Continuation continue_run(Runner& r, const float* logits, int64_t N, const std::vector<int32_t>& forced) {
  const int64_t V = r.model().config.vocab_size;
  Continuation c;
  for (int64_t j = 0; j < N; ++j) {
    if (j > 0) {
      const int32_t tok = forced.empty() ? c.argmax.back() : forced[static_cast<size_t>(j - 1)];
      logits = r.forward(&tok, 1);
    }
    c.argmax.push_back(argmax(logits, V));
    c.logits.emplace_back(logits, logits + V);
    const int32_t target = forced.empty() ? c.argmax.back() : forced[static_cast<size_t>(j)];
    c.nll.push_back(token_nll(logits, V, target));
  }
  return c;
}

}  // namespace

std::vector<PrefixReuseResult> measure_prefix_reuse(const Model& model,
                                                    const std::vector<std::vector<int32_t>>& requests,
                                                    const std::vector<std::vector<int64_t>>& hits, const Codec& codec,
                                                    int64_t continuation, Backend backend) {
  const ModelConfig& c = model.config;
  const int64_t N = continuation;
  if (N < 1) throw UsageError("--continue " + std::to_string(N) + " must be >= 1");
  codec.make_state(c.head_dim, 1);  // a codec that does not fit D fails before any work
  for (size_t i = 0; i < requests.size(); ++i) {
    const int64_t n = static_cast<int64_t>(requests[i].size());
    if (n < 1) throw UsageError("request " + std::to_string(i) + ": no tokens");
    if (n + N - 1 > c.seq_len)
      throw UsageError("request " + std::to_string(i) + ": " + std::to_string(n) + " tokens and a continuation of " +
                       std::to_string(N) + " exceed the context length seq_len = " + std::to_string(c.seq_len) +
                       " of " + c.name + " (use shorter requests or --continue)");
  }
  std::vector<PrefixReuseResult> out(hits.size());
  Runner uncached(model, backend), cached(model, backend);
  std::vector<int32_t> greedy;
  for (size_t i = 0; i < requests.size(); ++i) {
    const std::vector<int32_t>& ids = requests[i];
    const int64_t n = static_cast<int64_t>(ids.size());
    uncached.reset();
    auto t0 = Clock::now();
    const float* logits = uncached.forward(ids.data(), n);
    const double t_full = since(t0);
    int64_t h_max = 0;
    for (const auto& hc : hits) h_max = std::max(h_max, hc[i]);
    const PrefixKv exact = keep_prefix(uncached, h_max);
    const Continuation ref = continue_run(uncached, logits, N, {});
    greedy = ref.argmax;
    for (size_t k = 0; k < hits.size(); ++k) {
      PrefixReuseResult& r = out[k];
      ++r.requests;
      const int64_t h = hits[k][i];
      KVSIM_ASSERT(h >= 0 && h < n);
      if (h == 0) continue;
      const PrefixKv kv = through_codec(exact, h, c.head_dim, codec);
      t0 = Clock::now();
      cached.load_prefix(h, kv.k, kv.v);
      const float* lc = cached.forward(ids.data() + h, n - h);
      const double t_part = since(t0);
      const Continuation got = continue_run(cached, lc, N, greedy);
      ++r.hit_requests;
      r.hit_tokens += h;
      r.prompt_tokens += n;
      r.seconds_uncached += t_full;
      r.seconds_cached += t_part;
      for (int64_t j = 0; j < N; ++j) {
        const size_t J = static_cast<size_t>(j);
        r.agree += got.argmax[J] == greedy[J] ? 1 : 0;
        r.nll_uncached += ref.nll[J];
        r.nll_cached += got.nll[J];
        for (int64_t x = 0; x < c.vocab_size; ++x)
          r.max_logit_diff = std::max(r.max_logit_diff,
                                      std::fabs(double(got.logits[J][size_t(x)]) - double(ref.logits[J][size_t(x)])));
      }
      r.positions += N;
    }
  }
  for (auto& r : out)
    if (r.positions > 0) {
      r.nll_uncached /= static_cast<double>(r.positions);
      r.nll_cached /= static_cast<double>(r.positions);
    }
  return out;
}

}  // namespace kvsim::model
