// The replay engine (design.md §3). For each layer (read one at a time) and each configuration, every
// instance (one (layer, KV head), or one layer for layer-coupled strategies) runs
//   prefill -> for t = P..T-1: append (via the codec) -> attend & measure -> observe -> evict
// against reference statistics computed once per layer and shared by all configurations.
// replay_layer takes plain data only, so a model runner can drive the same strategies.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "sim/exact_stats.h"
#include "sim/kernels/backend.h"
#include "sim/metrics.h"
#include "sim/strategies/strategy.h"

namespace kvsim::traces {
class TraceReader;
}
namespace kvsim::cuda {
struct AttendBatch;
}

namespace kvsim {

class Instance;  // sim/instance.h

inline constexpr int64_t kPrefillOfTrace = -1;
inline constexpr int64_t kPrefillAtContext = -2;
// "trace" -> kPrefillOfTrace, "context" -> kPrefillAtContext, an integer >= 0 as itself (UsageError
// naming `what` otherwise).
int64_t parse_prefill(const std::string& s, const std::string& what);

// What one replay may hold at once (--max-memory; README "Memory"): a layer's q, k, v (and k_pre)
// as float32 plus its reference statistics. A trace declaring more is refused before any allocation.
inline constexpr int64_t kDefaultMaxMemory = int64_t{8} << 30;
// Bytes as an integer with an optional binary suffix K, M, G or T (KiB, MiB, ... also accepted):
// "512M", "16G". UsageError naming `what` otherwise.
int64_t parse_memory(const std::string& s, const std::string& what);
// The replay's per-layer memory for shape (H, Hkv, T, D), with k_pre when `pre`.
int64_t replay_layer_bytes(int64_t H, int64_t Hkv, int64_t T, int64_t D, bool pre);

struct ReplayOptions {
  int64_t prefill = -1;  // kPrefillOfTrace: the sequence's prefill_len; kPrefillAtContext: its context_len
  int64_t stride = 1;    // evaluate every stride-th decode step (observe/evict still run every step)
  int64_t seq = 0;       // sequence index
  Protocol protocol = Protocol::evict;  // how every configuration's cache meets decoding
  Backend backend = Backend::ref;
  int64_t bins = 16;  // per-position curve bins over [P, T)
  double eps = 1e-6;  // kl smoothing
  // Sidecar cache of the reference statistics: "" the default cache folder (stats_cache.h),
  // "off" none, else a folder.
  std::string stats_cache;
  int64_t max_memory = kDefaultMaxMemory;            // bytes; replay_layer_bytes() above it is refused
  std::function<void(const std::string&)> progress;  // one line per layer; null: silent
  // The cuda path's batched attention (lockstep replay). Null: cuda::run_attend_batch with
  // backend cuda. Set, the lockstep replay runs with this function on any backend: the tests pass
  // the host emulation of the kernel to check the cuda path's bookkeeping without a GPU.
  void (*attend_batch)(cuda::AttendBatch&) = nullptr;
  // Called at every decode step of every instance after attention, before observe and evict (the
  // point where metrics are taken), from the replay's threads (serially with backend ref). For
  // tests that compare the replay with other drivers of the same instance; null: none.
  std::function<void(int64_t layer, const Instance& inst, int64_t t)> on_step;
};

struct HeadResult {
  int64_t layer = 0, head = 0;  // query head
  std::array<MetricSummary, kNumMetrics> summary{};
  std::array<std::vector<double>, kNumMetrics> curve{};  // [bins] mean per bin (NaN: no step)
};

struct ConfigResult {
  std::string strategy, spec;
  std::map<std::string, std::string> params;
  std::vector<HeadResult> heads;                         // [L * H], layer-major
  std::array<MetricSummary, kNumMetrics> summary{};      // means over heads of each statistic
  std::array<std::vector<double>, kNumMetrics> curve{};  // means over heads
  double seconds = 0;                                    // replay time (excl. reading, reference)
  // Degeneracies (Instance::degeneracies): each line with the number of caches it held in,
  // "kivi: no keys were ever quantized (...) (in 20 of 20 caches)"; printed on stderr and stored.
  std::vector<std::string> warnings;
  std::map<std::string, int64_t> degenerate;  // line -> caches, over all layers
  int64_t n_caches = 0;
};

struct ReplayResult {
  std::string trace, sequence;
  int64_t T = 0, P = 0, stride = 1, L = 0, H = 0, Hkv = 0, D = 0;
  Protocol protocol = Protocol::evict;
  double eps = 1e-6;
  Backend backend = Backend::ref;
  std::vector<int64_t> bin_edges;  // [bins + 1] positions
  std::vector<ConfigResult> configs;
  double read_seconds = 0, ref_seconds = 0, replay_seconds = 0;
  bool stats_from_cache = false;
  // Set when the sidecar found for this trace was invalid (StatsCache::invalid_reason) and was recomputed:
  // "PATH: WHY". The commands print it as a warning.
  std::string stats_cache_rebuilt;
};

// Validates P and stride against T (UsageError with the numbers).
void check_replay_args(int64_t T, int64_t P, int64_t stride);
std::vector<int64_t> bin_edges(int64_t P, int64_t T, int64_t bins);

// Runs every configuration on one layer. `results` has one entry per strategy, each with heads
// sized L * H; this fills heads [layer * H, (layer + 1) * H). lv.k_norm must be set, and
// lv.prompt_colsums when any strategy needs_prompt_colsums(). `plans`: one per strategy, the
// sequence's cross-layer plan of those that needs_model_plan (Strategy::make_plan over every layer's
// profile); empty only for a one-layer model (L = 1), whose states plan from this layer (model_plan).
void replay_layer(const LayerView& lv, const ExactStats& rs, int64_t layer, int64_t L, int64_t P,
                  std::span<const Strategy* const> strategies, const ReplayOptions& opt,
                  std::vector<ConfigResult>& results, std::span<const std::vector<double>> plans = {});

// Fills the means over heads (summary and curves) from results[i].heads.
void finalize_summaries(ConfigResult& r);
// "" when every summary statistic of every metric (the run's and each head's) is finite, else which one
// is not ("kl mean = nan in layer 1, head 3"): such a run is a failed run, never a result.
std::string non_finite_metric(const ConfigResult& r);

// What a whole-sequence replay reads: a trace's sequence, or tensors a caller holds in memory (the
// Python module's run_arrays). `read(layer)` returns the layer's tensors, valid until the next call.
struct LayerTensors {
  const float* q = nullptr;      // [H, T, D]
  const float* k = nullptr;      // [Hkv, T, D]
  const float* v = nullptr;      // [Hkv, T, D]
  const float* k_pre = nullptr;  // [Hkv, T, D] when has_k_pre and a strategy needs it
};
struct LayerSource {
  std::string name, sequence;  // reported as ReplayResult::trace and ::sequence
  int64_t L = 0, H = 0, Hkv = 0, D = 0, T = 0;
  int64_t prefill_len = 0, context_len = -1;  // what --prefill trace / context resolve to (-1: none)
  double rope_theta = 10000.0;
  RopeStyle rope_style = RopeStyle::none;
  bool has_k_pre = false;
  std::string stats_path;  // the sidecar cache's key (a trace's path); "": no sidecar cache
  int64_t stats_seq = 0;
  std::function<LayerTensors(int64_t layer, bool want_k_pre)> read;
  // The layer's pre-RoPE queries [H, T, D] (valid until the next call), or empty when the source
  // has none: a strategy that needs_q_pre() is then refused.
  std::function<const float*(int64_t layer)> read_q_pre;
  // The layer's vo_norm [H, T] (valid until the next call), or empty when the source has none: a
  // strategy that needs_vo_norm() is then refused.
  std::function<const float*(int64_t layer)> read_vo_norm;
  // The layer's kvzip_score [Hkv, T] (valid until the next call), or empty when the source has none:
  // a strategy that needs_kvzip_score() is then refused. They score the first kvzip_context tokens.
  std::function<const float*(int64_t layer)> read_kvzip_score;
  int64_t kvzip_context = 0;
};

// Whole sequence of a layer source, one layer in memory at a time.
ReplayResult replay_source(const LayerSource& src, std::span<const Strategy* const> strategies,
                           const ReplayOptions& opt);

// Whole sequence of a trace, one layer in memory at a time (replay_source over the trace).
ReplayResult replay_trace(const traces::TraceReader& reader, std::span<const Strategy* const> strategies,
                          const ReplayOptions& opt);

}  // namespace kvsim
