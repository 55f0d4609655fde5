// `kvsim sweep`: every configuration of a sweep config (tools/sweep_config.h) x every trace,
// sequence and prefill, into the results store (sim/store/STORE.md), resumable.
//
// The unit of work is a *run* (configuration x trace x sequence x prefill x stride). Runs are
// enumerated in a fixed order (trace, sequence, prefill, then the config's spec order); a run with
// index r belongs to shard r mod N. Pending runs of one (trace, sequence, prefill) *group* are cut
// into batches of up to `batch` configurations; one batch is one replay_trace call, so each layer
// is read once per batch and the reference statistics come from the sidecar cache computed by the
// first batch of the group. Each finished run is committed in its own transaction: a killed sweep
// loses at most the batch in flight (the serial driver) or the batches in flight on each rank (MPI).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sim/kernels/backend.h"
#include "sim/replay.h"
#include "sim/store/store.h"
#include "sim/strategies/strategy.h"
#include "tools/sweep_config.h"

namespace kvsim::tools {

struct SweepOptions {
  std::string config, db, shard, backend, stats_cache;
  std::string max_memory = "8G";  // --max-memory (parse_memory, sim/replay.h)
  int64_t batch = 32;
  bool quiet = false;
};

struct SweepConfigEntry {
  std::string spec;       // as written (expanded from the grid)
  std::string canonical;  // every parameter resolved, codec parts appended: the store's spec
  std::string strategy;   // name, or names joined by '+' for a composition
  std::string params_json;
  int line = 0;
  std::vector<int64_t> prefills;  // the prefill codes and protocols it runs at (SweepSpec)
  std::vector<Protocol> protocols;
  std::unique_ptr<Strategy> strategy_obj;
};

struct SweepTraceEntry {
  std::string path, error;  // error: one line when the trace cannot be read (its runs fail)
  StoreTrace row;
};

// A (trace, sequence, prefill, protocol) group; error set when none of its runs can start. A
// configuration runs in the groups of the protocols it fits (selectors under sparse only).
struct SweepGroup {
  int64_t trace = 0, seq_index = -1, prefill = 0, n_tokens = 0;
  int64_t prefill_code = -1;  // what the config wrote (SweepPlan::prefills): the configs listing it run here
  Protocol protocol = Protocol::evict;
  std::string sequence, error;
};

struct SweepBatch {
  int64_t group = 0;
  std::vector<int64_t> configs;  // indices into SweepWork::configs
};

struct SweepWork {
  SweepPlan plan;
  Backend backend = Backend::ref;
  std::vector<SweepConfigEntry> configs;
  std::vector<SweepTraceEntry> traces;
  std::vector<SweepGroup> groups;
  int64_t total_runs = 0;                  // all runs of the sweep, every shard
  int64_t max_memory = kDefaultMaxMemory;  // ReplayOptions::max_memory of every replay
  // One line per configuration that runs in no group (its protocols or prefills are not the sweep's):
  // `kvsim sweep` prints them before it starts.
  std::vector<std::string> warnings;
};

// The outcome of one run (ids are filled by whoever writes the store).
struct SweepOutcome {
  int64_t group = 0, config = 0;
  StoreRun run;
};

// Parses the config, validates every spec (UsageError "CONFIG:LINE: ..." for unknown strategies or
// parameters), opens each trace once to list its sequences. Needs no store.
SweepWork prepare_sweep(const SweepOptions& opt);

// Parses "I/N" (0 <= I < N); "" is 0/1.
std::pair<int64_t, int64_t> parse_shard(const std::string& s);

// Registers traces and configurations in the store and returns the batches of this shard's runs
// that are not done yet; `skipped` counts this shard's runs already done.
std::vector<SweepBatch> pending_batches(const SweepWork& w, ResultsStore& store, int64_t shard, int64_t n_shards,
                                        int64_t batch, int64_t* skipped, std::vector<int64_t>* trace_ids,
                                        std::vector<int64_t>* config_ids);

// Runs one batch; never throws for trace or strategy problems (those become failed runs).
std::vector<SweepOutcome> run_batch(const SweepWork& w, const SweepBatch& b, const std::string& stats_cache);

// Store rows shared with `kvsim run --db`: the identity of a spec (canonical text with every
// parameter resolved, strategy name(s), params JSON; UsageError for a bad spec), the trace row of a
// readable trace, and the done run of configuration `config` of a replay (ids left 0).
StoreConfig store_config_of(const std::string& spec);
StoreTrace store_trace_of(const std::string& path, const std::string& model, bool synthetic, int64_t L, int64_t H,
                          int64_t Hkv, int64_t D);
StoreRun store_run_of(const ReplayResult& rr, size_t config);
// A configuration's degeneracies (ConfigResult::warnings) as the store keeps them: one per line.
std::string warnings_text(const ConfigResult& c);
// One line on stderr per degenerate configuration of a replay: "WHO: warning: SPEC, sequence S: ...".
void warn_degeneracies(const ReplayResult& rr, const std::string& who);

// The default results store of a config: next to it, <config stem>.db.
std::string default_db_path(const std::string& config);

// The serial driver (kvsim sweep). Returns the exit status: 0, 1 (some run failed), 130 (SIGINT),
// 143 (SIGTERM).
int run_sweep(const SweepOptions& opt);

// SIGINT and SIGTERM handling shared by the drivers: the first one asks to stop after the batch in
// flight, a second one kills the process. The exit status is then 128 + the signal (130, 143).
void install_stop_handler();
bool stop_requested();
int stop_exit_status();

}  // namespace kvsim::tools
