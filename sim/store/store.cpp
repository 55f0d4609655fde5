#include "sim/store/store.h"

#include <sqlite3.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>

#include "sim/base/error.h"
#include "sim/base/regular_file.h"
#include "sim/store/schema_sql.h"  // generated from sim/store/schema.sql

namespace kvsim {

namespace {

// An SQL failure: a damaged store (SQLITE_CORRUPT, SQLITE_NOTADB) is bad input, exit 2; the rest
// (disk full, locked, I/O) are runtime failures, exit 1.
[[noreturn]] void sql_fail(int errcode, const std::string& what) {
  const int rc = errcode & 0xff;
  if (rc == SQLITE_CORRUPT || rc == SQLITE_NOTADB) throw FormatError(what + " (the store is damaged)");
  throw IoError(what);
}

// RAII prepared statement.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql, const std::string& path) : db_(db), path_(path) {
    if (sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) != SQLITE_OK)
      sql_fail(sqlite3_extended_errcode(db), path + ": SQL error: " + sqlite3_errmsg(db));
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt& bind(int i, int64_t v) { return check(sqlite3_bind_int64(s_, i, v)); }
  Stmt& bind(int i, double v) { return check(sqlite3_bind_double(s_, i, v)); }
  Stmt& bind(int i, const std::string& v) { return check(sqlite3_bind_text(s_, i, v.c_str(), -1, SQLITE_TRANSIENT)); }
  bool step() {
    int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    sql_fail(sqlite3_extended_errcode(db_), path_ + ": SQL error: " + sqlite3_errmsg(db_));
  }
  void reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  int64_t col_int(int i) { return sqlite3_column_int64(s_, i); }
  std::string col_text(int i) {
    const unsigned char* p = sqlite3_column_text(s_, i);
    return p ? reinterpret_cast<const char*>(p) : "";
  }

 private:
  Stmt& check(int rc) {
    if (rc != SQLITE_OK) throw IoError(path_ + ": SQL bind error: " + sqlite3_errmsg(db_));
    return *this;
  }
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
  std::string path_;
};

std::string now_iso() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// file:PATH?immutable=1 with PATH percent-encoded (SQLite URI filenames).
std::string immutable_uri(const std::string& path) {
  std::string uri = "file:";
  for (unsigned char c : std::filesystem::absolute(path).string()) {
    if (std::isalnum(c) || c == '/' || c == '-' || c == '_' || c == '.' || c == '~') {
      uri += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      uri += buf;
    }
  }
  return uri + "?immutable=1";
}

}  // namespace

std::string content_hash_hex(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

ResultsStore::ResultsStore(const std::string& path, StoreMode mode) : path_(path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (mode == StoreMode::read) {
    if (!fs::is_regular_file(path, ec)) throw UsageError(path + ": no such results store");
    open(path_, SQLITE_OPEN_READONLY);
    try {
      std::string v;
      try {
        v = existing_version();
      } catch (const FormatError&) {
        // A WAL store read where no -shm can be created (a read-only folder): with no -wal file,
        // everything is in the main file and no writer is active, so the file is read as immutable.
        if (fs::exists(path + "-wal", ec)) throw;
        sqlite3_close(db_);
        db_ = nullptr;
        open(immutable_uri(path), SQLITE_OPEN_READONLY | SQLITE_OPEN_URI);
        v = existing_version();
      }
      if (v.empty()) throw FormatError(path + ": an empty SQLite database, not a kvsim results store (no tables)");
      if (v != std::to_string(kStoreSchemaVersion))
        throw FormatError(path + ": results store schema_version = '" + v + "' but this kvsim reads version " +
                          std::to_string(kStoreSchemaVersion) +
                          (v == "1" || v == "2" ? " (a writing command, kvsim sweep or run --db, migrates it in place)"
                                                : " (use a new --db file)"));
    } catch (...) {
      sqlite3_close(db_);
      db_ = nullptr;
      throw;
    }
    return;
  }
  const bool existed = fs::exists(path, ec) && fs::file_size(path, ec) > 0;
  fs::path parent = fs::path(path).parent_path();
  if (!parent.empty() && !fs::is_directory(parent, ec))
    throw UsageError(path + ": directory " + parent.string() + " does not exist");
  require_regular_file(path, "results store");  // a directory or FIFO as --db: one line, exit 2
  open(path_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  try {
    if (existed) {
      // Must be a kvsim store of our schema version before we touch anything. A database without
      // any table is one whose creation was killed before the schema transaction committed (only
      // the WAL header got written): create the schema below.
      std::string v = existing_version();
      if (v.empty()) v = std::to_string(kStoreSchemaVersion);
      if (v == "1") {
        migrate_v1();
        v = "2";
      }
      if (v == "2") {
        migrate_v2();
        v = std::to_string(kStoreSchemaVersion);
      }
      if (v != std::to_string(kStoreSchemaVersion))
        throw FormatError(path + ": results store schema_version = '" + v + "' but this kvsim writes version " +
                          std::to_string(kStoreSchemaVersion) + " (use a new --db file)");
    }
    exec("PRAGMA journal_mode=WAL");
    exec("PRAGMA synchronous=NORMAL");
    exec("PRAGMA foreign_keys=ON");
    exec(std::string("BEGIN IMMEDIATE;") + kStoreSchemaSql +
         "INSERT OR IGNORE INTO meta VALUES('schema', 'kvsim-results');"
         "INSERT OR IGNORE INTO meta VALUES('schema_version', '" +
         std::to_string(kStoreSchemaVersion) +
         "');"
         "INSERT OR IGNORE INTO meta VALUES('created', '" +
         now_iso() + "');COMMIT;");
  } catch (...) {
    sqlite3_close(db_);
    db_ = nullptr;
    throw;
  }
}

void ResultsStore::open(const std::string& name, int flags) {
  if (sqlite3_open_v2(name.c_str(), &db_, flags, nullptr) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw IoError(path_ + ": cannot open results store: " + msg);
  }
  sqlite3_busy_timeout(db_, 120000);
}

std::string ResultsStore::existing_version() {
  char* err = nullptr;
  if (sqlite3_exec(db_, "SELECT count(*) FROM sqlite_master", nullptr, nullptr, &err) != SQLITE_OK) {
    std::string m = err ? err : "?";
    sqlite3_free(err);
    throw FormatError(path_ + ": not an SQLite database (" + m + ")");
  }
  bool has_meta = false, has_tables = false;
  {
    Stmt s(db_, "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'", path_);
    has_meta = s.step();
    Stmt t(db_, "SELECT 1 FROM sqlite_master", path_);
    has_tables = t.step();
  }
  if (!has_tables) return "";
  if (!has_meta) throw FormatError(path_ + ": an SQLite database but not a kvsim results store (no meta table)");
  Stmt s(db_, "SELECT value FROM meta WHERE key='schema_version'", path_);
  return s.step() ? s.col_text(0) : "(missing)";
}

// Version 1 had no runs.protocol: every run was protocol evict. The runs table is rebuilt with the
// column (SQLite cannot change a UNIQUE constraint in place) in one transaction, with foreign keys
// off so that dropping the old table does not cascade into summaries and curves; their run ids stay.
void ResultsStore::migrate_v1() {
  exec("PRAGMA foreign_keys=OFF");
  exec("BEGIN IMMEDIATE");
  {  // another process may have migrated while this one waited for the write lock
    Stmt s(db_, "SELECT value FROM meta WHERE key='schema_version'", path_);
    if (!s.step() || s.col_text(0) != "1") {
      exec("COMMIT; PRAGMA foreign_keys=ON");
      return;
    }
  }
  exec(R"sql(DROP VIEW IF EXISTS results;
CREATE TABLE runs_v2(id INTEGER PRIMARY KEY, config_id INTEGER REFERENCES configs(id),
  trace_id INTEGER REFERENCES traces(id), sequence TEXT, prefill INTEGER, stride INTEGER, n_tokens INTEGER,
  status TEXT, error TEXT, seconds REAL, host TEXT, kvsim_version TEXT, backend TEXT, finished TEXT,
  protocol TEXT NOT NULL DEFAULT 'evict',
  UNIQUE(config_id, trace_id, sequence, prefill, stride, protocol));
INSERT INTO runs_v2 SELECT id, config_id, trace_id, sequence, prefill, stride, n_tokens, status, error, seconds,
  host, kvsim_version, backend, finished, 'evict' FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v2 RENAME TO runs;
UPDATE meta SET value = '2' WHERE key = 'schema_version';
COMMIT;)sql");
  exec("PRAGMA foreign_keys=ON");
}

// Version 2 had no runs.warnings: a column added in place (no constraint changes), '' for every run.
void ResultsStore::migrate_v2() {
  exec("BEGIN IMMEDIATE");
  {  // another process may have migrated while this one waited for the write lock
    Stmt s(db_, "SELECT value FROM meta WHERE key='schema_version'", path_);
    if (!s.step() || s.col_text(0) != "2") {
      exec("COMMIT");
      return;
    }
  }
  exec(
      "ALTER TABLE runs ADD COLUMN warnings TEXT NOT NULL DEFAULT ''; "
      "UPDATE meta SET value = '3' WHERE key = 'schema_version'; COMMIT;");
}

ResultsStore::~ResultsStore() {
  if (db_) sqlite3_close(db_);
}

void ResultsStore::exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string m = err ? err : "?";
    sqlite3_free(err);
    const int rc = sqlite3_extended_errcode(db_);  // before ROLLBACK replaces it
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    sql_fail(rc, path_ + ": SQL error: " + m);
  }
}

int64_t ResultsStore::add_trace(const StoreTrace& t) {
  Stmt ins(db_,
           "INSERT INTO traces(path, content_hash, model, synthetic, n_layers, n_heads, n_kv_heads, head_dim) "
           "VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(content_hash) DO UPDATE SET path=excluded.path",
           path_);
  ins.bind(1, t.path).bind(2, t.content_hash).bind(3, t.model).bind(4, int64_t{t.synthetic}).bind(5, t.n_layers);
  ins.bind(6, t.n_heads).bind(7, t.n_kv_heads).bind(8, t.head_dim);
  ins.step();
  Stmt q(db_, "SELECT id FROM traces WHERE content_hash = ?", path_);
  q.bind(1, t.content_hash);
  KVSIM_ASSERT(q.step());
  return q.col_int(0);
}

int64_t ResultsStore::add_config(const StoreConfig& c) {
  const std::string hash = content_hash_hex(c.spec);
  Stmt ins(db_, "INSERT OR IGNORE INTO configs(strategy, spec, params_json, content_hash) VALUES(?,?,?,?)", path_);
  ins.bind(1, c.strategy).bind(2, c.spec).bind(3, c.params_json).bind(4, hash);
  ins.step();
  Stmt q(db_, "SELECT id, spec FROM configs WHERE content_hash = ?", path_);
  q.bind(1, hash);
  KVSIM_ASSERT(q.step());
  if (q.col_text(1) != c.spec)
    throw InternalError(path_ + ": configuration hash collision between '" + c.spec + "' and '" + q.col_text(1) + "'");
  return q.col_int(0);
}

std::vector<int64_t> ResultsStore::add_configs(const std::vector<StoreConfig>& cs) {
  std::vector<int64_t> ids;
  ids.reserve(cs.size());
  exec("BEGIN IMMEDIATE");
  try {
    for (const auto& c : cs) ids.push_back(add_config(c));
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
  return ids;
}

std::set<RunKey> ResultsStore::done_runs() {
  std::set<RunKey> out;
  Stmt q(db_, "SELECT config_id, trace_id, sequence, prefill, stride, protocol FROM runs WHERE status = 'done'", path_);
  while (q.step()) out.insert({q.col_int(0), q.col_int(1), q.col_text(2), q.col_int(3), q.col_int(4), q.col_text(5)});
  return out;
}

int64_t ResultsStore::count_runs(const std::string& status) {
  Stmt q(db_, status.empty() ? "SELECT count(*) FROM runs" : "SELECT count(*) FROM runs WHERE status = ?", path_);
  if (!status.empty()) q.bind(1, status);
  q.step();
  return q.col_int(0);
}

namespace {
// "" when every summary statistic is finite, else the first that is not (STORE.md: such a run is failed).
std::string non_finite_row(const StoreRun& r) {
  for (const auto& row : r.summaries)
    for (double x : {row.mean, row.p5, row.p50, row.p95, row.worst})
      if (!std::isfinite(x))
        return row.metric + " = " + std::to_string(x) +
               (row.layer < 0 ? std::string(" (run summary)")
                              : " in layer " + std::to_string(row.layer) + ", head " + std::to_string(row.head));
  return "";
}
}  // namespace

void ResultsStore::commit_run(const StoreRun& run) {
  // A non-finite metric is never a result: the run is recorded failed, without its rows, so that
  // done_runs() reruns it and best never ranks it.
  StoreRun failed;
  if (const std::string bad = run.status == "done" ? non_finite_row(run) : ""; !bad.empty()) {
    failed = run;
    failed.status = "failed";
    failed.error = "the metric " + bad + " is not finite";
    failed.summaries.clear();
    failed.curves.clear();
  }
  const StoreRun& r = failed.status == "failed" ? failed : run;
  exec("BEGIN IMMEDIATE");
  try {
    {
      Stmt del(db_,
               "DELETE FROM runs WHERE config_id=? AND trace_id=? AND sequence=? AND prefill=? AND stride=? AND "
               "protocol=?",
               path_);
      del.bind(1, r.config_id).bind(2, r.trace_id).bind(3, r.sequence).bind(4, r.prefill).bind(5, r.stride);
      del.bind(6, r.protocol);
      del.step();
    }
    Stmt ins(db_,
             "INSERT INTO runs(config_id, trace_id, sequence, prefill, stride, n_tokens, status, error, seconds, host, "
             "kvsim_version, backend, finished, protocol, warnings) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
             path_);
    ins.bind(1, r.config_id).bind(2, r.trace_id).bind(3, r.sequence).bind(4, r.prefill).bind(5, r.stride);
    ins.bind(6, r.n_tokens).bind(7, r.status).bind(8, r.error).bind(9, r.seconds).bind(10, r.host);
    ins.bind(11, r.kvsim_version).bind(12, r.backend).bind(13, now_iso()).bind(14, r.protocol);
    ins.bind(15, r.warnings);
    ins.step();
    const int64_t run_id = sqlite3_last_insert_rowid(db_);
    Stmt s(db_, "INSERT INTO summaries VALUES(?,?,?,?,?,?,?,?,?,?)", path_);
    for (const auto& row : r.summaries) {
      s.bind(1, run_id).bind(2, row.layer).bind(3, row.head).bind(4, row.metric).bind(5, row.mean).bind(6, row.p5);
      s.bind(7, row.p50).bind(8, row.p95).bind(9, row.worst).bind(10, row.n);
      s.step();
      s.reset();
    }
    Stmt c(db_, "INSERT INTO curves VALUES(?,?,?,?,?,?)", path_);
    for (const auto& p : r.curves) {
      c.bind(1, run_id).bind(2, p.metric).bind(3, p.bin).bind(4, p.pos_lo).bind(5, p.pos_hi).bind(6, p.value);
      c.step();
      c.reset();
    }
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

}  // namespace kvsim
