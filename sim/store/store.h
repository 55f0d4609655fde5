// The SQLite results store (sim/store/STORE.md): traces, configurations, runs, per-(layer, head)
// summaries and per-position curves. WAL mode; one transaction per finished run; a busy timeout
// lets several processes (shards, MPI ranks) write the same database.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

struct sqlite3;

namespace kvsim {

inline constexpr int kStoreSchemaVersion = 3;

struct StoreTrace {
  std::string path, content_hash, model;
  bool synthetic = false;
  int64_t n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
};

struct StoreConfig {
  std::string strategy, spec, params_json;  // content_hash is computed from spec
};

struct StoreSummaryRow {
  int64_t layer = -1, head = -1;  // -1, -1: the run's summary
  std::string metric;
  double mean = 0, p5 = 0, p50 = 0, p95 = 0, worst = 0;
  int64_t n = 0;
};

struct StoreCurvePoint {
  std::string metric;
  int64_t bin = 0, pos_lo = 0, pos_hi = 0;
  double value = 0;
};

// Identifies a run: (config, trace, sequence, prefill, stride, protocol).
using RunKey = std::tuple<int64_t, int64_t, std::string, int64_t, int64_t, std::string>;

struct StoreRun {
  int64_t config_id = 0, trace_id = 0;
  std::string sequence;
  int64_t prefill = 0, stride = 1, n_tokens = 0;
  std::string status = "done", error;
  double seconds = 0;
  std::string host, kvsim_version, backend;
  std::vector<StoreSummaryRow> summaries;
  std::vector<StoreCurvePoint> curves;
  std::string protocol = "evict";  // evict | prefill | sparse (sim/strategies/STRATEGIES.md)
  std::string warnings;            // the run's degeneracies, one per line ('' when none; STORE.md)
  RunKey key() const { return {config_id, trace_id, sequence, prefill, stride, protocol}; }
};

// 64-bit FNV-1a of a string, as 16 hex digits.
std::string content_hash_hex(const std::string& s);

// How a command opens the store: `write` creates it (and its schema) or opens it for commits,
// migrating an older schema in place; `read` never writes a byte (best, plot: a read-only file or
// folder works; a WAL store whose -shm cannot be created and that has no -wal is read as
// immutable), and refuses a missing file or one that needs migrating.
enum class StoreMode { write, read };

class ResultsStore {
 public:
  // Refuses another schema version or a file that is not a kvsim store (FormatError, one line).
  explicit ResultsStore(const std::string& path, StoreMode mode = StoreMode::write);
  ~ResultsStore();
  ResultsStore(const ResultsStore&) = delete;
  ResultsStore& operator=(const ResultsStore&) = delete;

  const std::string& path() const { return path_; }
  sqlite3* handle() const { return db_; }    // for a reading command's own queries
  int64_t add_trace(const StoreTrace& t);    // id; existing row when the hash is known
  int64_t add_config(const StoreConfig& c);  // id; existing row when the spec is known
  // Many configurations in one transaction (a sweep registers its whole grid at start).
  std::vector<int64_t> add_configs(const std::vector<StoreConfig>& cs);
  std::set<RunKey> done_runs();  // runs with status 'done'
  // Replaces an earlier row of the same key. A run marked done whose summaries hold a non-finite
  // statistic is recorded failed (error names the metric), without summaries or curves.
  void commit_run(const StoreRun& r);
  int64_t count_runs(const std::string& status = "");

 private:
  void exec(const std::string& sql);
  void open(const std::string& name, int flags);
  // The schema version of an existing file ("" for a database without tables, "(missing)" for a
  // meta table without one); FormatError when
  // it is not an SQLite database or not a kvsim store.
  std::string existing_version();
  void migrate_v1();  // schema version 1 -> 2 in place (runs.protocol = 'evict')
  void migrate_v2();  // schema version 2 -> 3 in place (runs.warnings = '')
  std::string path_;
  sqlite3* db_ = nullptr;
};

}  // namespace kvsim
