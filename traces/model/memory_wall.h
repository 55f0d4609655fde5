// The measured memory wall (kvsim capacity --mem-limit): the native runner grows a context one
// decode step at a time under a limit on the process's data memory that it sets for itself
// (setrlimit(RLIMIT_DATA): the kernel refuses any further private writable mapping past it) and
// stops at the first allocation that fails, against the prediction limit / bytes per token.
//
// The exact cache used here keeps K, V and positions in anonymous mappings grown in place by whole
// pages (mremap), so its footprint is its tokens rounded up to a page: no vector doubling, copy or
// allocator slack stands between the formula and the measurement. Linux only.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "sim/kernels/backend.h"
#include "traces/model/model.h"

namespace kvsim::model {

// Bytes the wall's cache holds per token: K and V in float32 plus an int64 position, for each of
// the L * Hkv (layer, KV head) caches.
int64_t wall_bytes_per_token(const ModelConfig& c);

// The tokens the wall's cache holds at most when `limit_bytes` are granted beyond what it held with
// one token, counting whole pages: each of the 3 * L * Hkv mappings (K, V, positions) grows by a page
// when its tokens need one. The formula 1 + limit / wall_bytes_per_token, with page rounding.
int64_t wall_page_tokens(const ModelConfig& c, int64_t limit_bytes);

struct WallOptions {
  int64_t limit_bytes = 0;  // data memory the growth may use beyond what the process holds at the start
  int64_t max_tokens = 0;   // stop there without hitting the limit (0: no bound but the limit)
  Backend backend = Backend::ref;
  std::function<void(int64_t tokens)> progress;  // every 256 tokens; null: silent
};

struct WallResult {
  int64_t limit_bytes = 0;     // as asked
  int64_t baseline_bytes = 0;  // the process's data memory (VmData) when the limit was set
  int64_t bytes_per_token = 0;
  int64_t predicted_tokens = 0;  // 1 (the first token, held before the limit) + limit / bytes_per_token
  int64_t page_tokens = 0;       // wall_page_tokens: the same with the mappings' page rounding
  int64_t measured_tokens = 0;   // tokens the cache held when an allocation failed (or max_tokens)
  bool hit_limit = false;        // false: stopped at max_tokens
  std::string failure;           // what failed ("std::bad_alloc"); empty when !hit_limit
  double seconds = 0;
};

// Grows a greedy decode from BOS (id 1) on `m` until an allocation fails under the limit, or
// max_tokens. m.config.seq_len is lifted for the run (RoPE needs no table) and restored. The limit is
// restored before returning, after the runner and its caches are freed, so what the caller
// allocates afterwards is not limited.
// UsageError for a limit < 1 page or a backend other than ref/omp (the GPU runner allocates its
// whole cache up front: its wall is measured on the device, not here).
WallResult measure_memory_wall(Model& m, const WallOptions& opt);

}  // namespace kvsim::model
