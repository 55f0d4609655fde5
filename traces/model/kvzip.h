// KVzip's context-reconstruction scores (Kim et al., "KVzip: Query-Agnostic KV Cache Compression with
// Context Reconstruction", arXiv 2505.23416; reference code kvpress presses/kvzip_press.py, KVzipPress):
// what `kvsim record --record kvzip` writes as each layer's kvzip_score [Hkv, T] (traces/FORMAT.md) and
// the kvzip strategy cuts by (sim/strategies/kvzip.cpp).
//
// The context (the first C tokens) is split into chunks of `chunk` tokens. For each chunk the model,
// with exactly the context in its cache, is teacher-forced through the repeat sequence
//     prompt + suffix + the chunk's ids,
// prompt = "\n\nRepeat the previous context exactly." for the first chunk and "\n\nRepeat the part of
// the previous context exactly, starting with" + the previous chunk's last `prev` ids for the others,
// suffix = "\n" (a model without a chat template), each encoded without BOS; the repeat's tokens sit at
// positions C, C+1, ... Every repeat query (post-RoPE, each of the G query heads) is softmaxed over the
// keys [the first min(sinks, start) context tokens] ∪ [the chunk's] ∪ [the repeat's own, causal], with
// logits q·k/sqrt(D); the score of chunk token i is the maximum of that attention over the G query heads
// and every repeat query. Scores are computed in double and stored as float.
#pragma once

#include <cstdint>
#include <vector>

#include "traces/model/runner.h"
#include "traces/model/tokenizer.h"

namespace kvsim::model {

inline constexpr int64_t kKvzipChunk = 2048;  // the reference's chunk_size
inline constexpr int64_t kKvzipPrev = 8;      // prev_postfix_size
inline constexpr int64_t kKvzipSinks = 4;     // n_sink: sink keys of the later chunks' softmax

struct KvzipChunk {
  int64_t start = 0, end = 0;   // the chunk is context tokens [start, end)
  std::vector<int32_t> repeat;  // prompt + suffix + context[start, end)
};

// The chunks of `context` and their repeat sequences (tokenizer: the model's; encode without BOS).
std::vector<KvzipChunk> kvzip_chunks(const std::vector<int32_t>& context, const Tokenizer& tok,
                                     int64_t chunk = kKvzipChunk);

// One layer's scores from one chunk: q_rep [n, H, D] and k_rep [n, Hkv, D] of the repeat's n tokens,
// k_sink [ns, Hkv, D] the sink keys (the context's first ns = min(sinks, start)), k_chunk [m, Hkv, D] the
// chunk's; writes score[kv * ld + i] for i < m.
void kvzip_chunk_scores(const float* q_rep, const float* k_rep, int64_t n, const float* k_sink, int64_t ns,
                        const float* k_chunk, int64_t m, int64_t H, int64_t Hkv, int64_t D, float* score, int64_t ld);

// Runs the repeat passes on `runner` (its caches are reset before each chunk and left holding the last
// repeat) and returns every layer's scores [L][Hkv * C]. Throws UsageError (naming `what`) when the
// context and a repeat do not fit in the model's context length.
std::vector<std::vector<float>> kvzip_scores(Runner& runner, const std::vector<int32_t>& context,
                                             const std::vector<KvzipChunk>& chunks, const std::string& what);

}  // namespace kvsim::model
