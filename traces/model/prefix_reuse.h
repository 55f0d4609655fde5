// Real prefix reuse with the native runner (`kvsim prefix --model`): what a prefix cache's hit costs
// and saves when the cached KV is stored through a codec, measured on the live model.
//
// Per request x_0..x_{n-1} with h cached tokens (the prefix cache's hit, h < n):
//   uncached  prefill all n tokens in one forward call (timed), keep the KV of positions 0..h-1 as
//             the cache would have stored it, then a greedy continuation of N tokens: g_1 = argmax
//             of the prompt's last logits, g_{j+1} = argmax after running g_j;
//   cached    (h > 0) the kept KV goes through the codec (CodecState::store per (layer, KV head),
//             the slots' dequantized keys and values: what attention would read back), is loaded
//             into a fresh cache (Runner::load_prefix), x_h..x_{n-1} run in one forward call (load +
//             forward timed: the prefill of the missed part), then g_1..g_N are run teacher-forced.
// Compared per continuation position j: greedy agreement (the cached run's argmax equals g_j), the
// nll of g_j under each run's logits (ppl = exp of the mean over positions), and the largest
// |logit difference|. Argmax ties go to the lower id. Only requests with h > 0 are compared; the
// prefill time saved is sum(uncached - cached) over them (misses save nothing).
#pragma once

#include <cstdint>
#include <vector>

#include "sim/kernels/backend.h"
#include "sim/strategies/codec.h"
#include "traces/model/model.h"

namespace kvsim::model {

struct PrefixReuseResult {
  int64_t requests = 0, hit_requests = 0, hit_tokens = 0, prompt_tokens = 0;
  double seconds_uncached = 0;              // prefill of the hit requests, whole prompt
  double seconds_cached = 0;                // prefill of the hit requests, missed part (with the prefix's load)
  int64_t positions = 0, agree = 0;         // continuation positions compared, and agreeing
  double nll_uncached = 0, nll_cached = 0;  // means over the compared positions
  double max_logit_diff = 0;
  double greedy_agreement() const { return positions > 0 ? double(agree) / double(positions) : 1.0; }
};

// requests[i]: token ids; hits[c][i]: cached tokens of request i under configuration c (one result
// per configuration; the uncached run is shared). Throws UsageError when a request and its
// continuation exceed the context, an id is outside the vocabulary, or the codec does not fit D.
std::vector<PrefixReuseResult> measure_prefix_reuse(const Model& model,
                                                    const std::vector<std::vector<int32_t>>& requests,
                                                    const std::vector<std::vector<int64_t>>& hits, const Codec& codec,
                                                    int64_t continuation, Backend backend);

}  // namespace kvsim::model
