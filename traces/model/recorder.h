// Records a model's attention tensors into a trace (design.md §2). For each sequence:
//   1. the prompt is prefilled and, with `generate`, continued token by token through the KV cache
//      (greedy or sampled), which fixes the token ids the sequence header needs;
//   2. the caches are reset and the whole sequence is run again as a prefill, in blocks of
//      `block` tokens, with a LayerTap that hands each layer's q, k, v (q_pre, k_pre, o, vo_norm)
//      straight to the TraceWriter. Nothing larger than one block of one layer is ever buffered.
// The recorded tensors are those of the pass-2 prefill; they equal the decode pass's up to the
// float32 rounding of batched versus single-row matmuls.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "traces/model/runner.h"
#include "traces/model/sampler.h"
#include "traces/model/tokenizer.h"
#include "traces/writer.h"

namespace kvsim::model {

struct RecordOptions {
  int64_t generate = 0;  // tokens to generate after the prompt; -1: fill the context
  SamplerOptions sampling;
  bool pre = false;     // also q_pre, k_pre
  bool output = false;  // also o, the attention output
  // Also vo_norm [H, T]: ||W_o,h v_i||_1 from the recorded v and the model's o_proj, computed on the
  // host in double for every backend (traces/model/vo_norm.h; kvsim record --record vo_norm).
  bool vo_norm = false;
  // Also kvzip_score [Hkv, T]: KVzip's context-reconstruction scores of the context (context_len, else
  // the prompt), from its repeat passes in chunks of kvzip_chunk tokens (traces/model/kvzip.h; kvsim
  // record --record kvzip). Needs the tokenizer (the repeat prompts are text).
  bool kvzip = false;
  int64_t kvzip_chunk = 2048;
  int64_t kvzip_context = -1;  // the tokens scored: -1 = context_len, else the prompt; N = the first N

  int64_t block = 256;  // tokens per recording forward call
  // Called after each generated token and each recorded block with the units of work done in
  // this call (one per generated token, one per recorded token): for progress display.
  std::function<void(int64_t units)> progress;
};

struct PromptSpec {
  std::string name;          // sequence name; empty: zero-padded index
  std::string source;        // provenance, stored as the sequence's `source`
  std::vector<int32_t> ids;  // prompt ids, BOS included when wanted
  int64_t generate = -2;     // per-prompt override of RecordOptions::generate (-2: none)
  int output = -1;           // per-prompt override of RecordOptions::output (-1: none, 0/1)
  int64_t context_len = -1;  // the prompt's context tokens before its question (-1: none; traces/FORMAT.md)
  int64_t needle_start = -1, needle_end = -1;  // a needle's span in the prompt (-1: none; traces/FORMAT.md)
};

struct RecordStats {
  int64_t prompt_tokens = 0, tokens = 0;
  double generate_s = 0;  // pass 1
  double record_s = 0;    // pass 2, including writing
  double write_s = 0;     // of which inside the TraceWriter (begin_sequence, write, end_sequence)
};

traces::TraceHeader trace_header_for(const Model& model, traces::DType dtype, const std::string& recorder,
                                     const std::string& device);

// Where `needle` (token ids) sits in `prompt`, by the Retrieval Head reference's find_needle_idx: the
// first i whose window prompt[i, i + |needle|) holds more than 90% of the needle's distinct ids; {-1, -1}
// when none does.
std::pair<int64_t, int64_t> find_needle(const std::vector<int32_t>& prompt, const std::vector<int32_t>& needle);

// Tokens this prompt will generate (resolves -1 = fill and the per-prompt override); throws
// UsageError when the prompt is empty or prompt + generation exceed the context.
int64_t tokens_to_generate(const ModelConfig& config, const PromptSpec& prompt, const RecordOptions& opt);

// Records one sequence into `writer` (begin_sequence .. end_sequence). `tok` may be null (no text).
RecordStats record_sequence(Runner& runner, const Tokenizer* tok, const PromptSpec& prompt, const RecordOptions& opt,
                            traces::TraceWriter& writer);

}  // namespace kvsim::model
