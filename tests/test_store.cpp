// The SQLite results store (sim/store/store.h). Expected rows are the ones the test itself wrote.
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <cmath>
#include <fstream>
#include <limits>

#include "sim/base/error.h"
#include "sim/store/store.h"
#include "tests/trace_helpers.h"

using namespace kvsim;

namespace {
StoreRun make_run(int64_t cfg, int64_t tr, const std::string& status, double v) {
  StoreRun r;
  r.config_id = cfg;
  r.trace_id = tr;
  r.sequence = "0000";
  r.prefill = 128;
  r.stride = 1;
  r.n_tokens = 512;
  r.status = status;
  r.seconds = 0.5;
  r.host = "test";
  r.kvsim_version = "0";
  r.backend = "ref";
  // (fields set one by one: GCC 12 -Wrestrict misfires on brace-initialized strings here)
  StoreSummaryRow all;
  all.metric = "kl";
  all.mean = all.p5 = all.p50 = all.p95 = all.worst = v;
  all.n = 10;
  StoreSummaryRow head = all;
  head.layer = 0;
  head.head = 3;
  head.mean = v * 2;
  r.summaries = {all, head};
  StoreCurvePoint c;
  c.metric = "kl";
  c.pos_lo = 128;
  c.pos_hi = 160;
  c.value = v;
  r.curves = {c};
  return r;
}
int64_t scalar(const std::string& db, const std::string& sql) {
  sqlite3* h = nullptr;
  sqlite3_open(db.c_str(), &h);
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(h, sql.c_str(), -1, &s, nullptr);
  int64_t v = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1;
  sqlite3_finalize(s);
  sqlite3_close(h);
  return v;
}
}  // namespace

TEST_CASE("store: traces and configs are deduplicated by content hash and runs replace by key") {
  test::TempDir dir;
  const std::string db = dir.file("r.db");
  int64_t t1, c1, c2;
  {
    ResultsStore s(db);
    t1 = s.add_trace({"a.h5", "abc", "m", false, 5, 8, 4, 8});
    CHECK(s.add_trace({"moved/a.h5", "abc", "m", false, 5, 8, 4, 8}) == t1);
    c1 = s.add_config({"h2o", "h2o:budget=64,gqa=mean", "{}"});
    c2 = s.add_config({"h2o", "h2o:budget=128,gqa=mean", "{}"});
    CHECK(c1 != c2);
    CHECK(s.add_config({"h2o", "h2o:budget=64,gqa=mean", "{}"}) == c1);
    s.commit_run(make_run(c1, t1, "failed", 0));
    CHECK(s.done_runs().empty());
    s.commit_run(make_run(c1, t1, "done", 0.25));  // replaces the failed row
    s.commit_run(make_run(c2, t1, "done", 0.5));
    CHECK(s.count_runs() == 2);
    CHECK(s.done_runs().size() == 2);
  }
  // Reopen: state persists.
  ResultsStore s(db);
  CHECK(s.done_runs().count(RunKey{c1, t1, "0000", 128, 1, "evict"}) == 1);
  CHECK(scalar(db, "SELECT count(*) FROM summaries") == 4);
  CHECK(scalar(db, "SELECT count(*) FROM results") == 2);
  CHECK(scalar(db, "SELECT count(*) FROM traces") == 1);
  CHECK(scalar(db, "SELECT count(*) FROM runs WHERE status='failed'") == 0);
}

TEST_CASE("store: refuses a database of another schema version, and a non-store file") {
  test::TempDir dir;
  const std::string db = dir.file("old.db");
  { ResultsStore s(db); }
  {
    sqlite3* h = nullptr;
    sqlite3_open(db.c_str(), &h);
    sqlite3_exec(h, "UPDATE meta SET value='99' WHERE key='schema_version'", nullptr, nullptr, nullptr);
    sqlite3_close(h);
  }
  const std::string want =
      db + std::string(": results store schema_version = '99' but this kvsim writes version 3 (use a new --db file)");
  CHECK_THROWS_WITH_AS(ResultsStore{db}, want.c_str(), FormatError);
  const std::string junk = dir.file("junk.db");
  std::ofstream(junk) << "not a database at all, just text that is long enough to have a header......\n";
  CHECK_THROWS_AS(ResultsStore{junk}, FormatError);
  const std::string other = dir.file("other.db");
  {
    sqlite3* h = nullptr;
    sqlite3_open(other.c_str(), &h);
    sqlite3_exec(h, "CREATE TABLE x(a)", nullptr, nullptr, nullptr);
    sqlite3_close(h);
  }
  CHECK_THROWS_AS(ResultsStore{other}, FormatError);
  CHECK_THROWS_AS(ResultsStore{dir.file("no/such/dir/r.db")}, UsageError);
}

TEST_CASE("store: a database killed before its schema committed (no tables) is created, not refused") {
  test::TempDir dir;
  const std::string db = dir.file("half.db");
  {
    sqlite3* h = nullptr;
    sqlite3_open(db.c_str(), &h);
    sqlite3_exec(h, "PRAGMA journal_mode=WAL; PRAGMA user_version=0; BEGIN; CREATE TABLE t(a); ROLLBACK;", nullptr,
                 nullptr, nullptr);
    sqlite3_close(h);
  }
  ResultsStore s(db);
  CHECK(s.count_runs() == 0);
}

TEST_CASE("store: a run's warnings are stored, a schema version 2 store gets the column in place") {
  test::TempDir dir;
  const std::string db = dir.file("w.db");
  {
    ResultsStore s(db);
    const int64_t t = s.add_trace({"a.h5", "abc", "m", false, 5, 8, 4, 8});
    StoreRun r = make_run(s.add_config({"full+kivi", "full+kivi:bits=2", "{}"}), t, "done", 0.5);
    r.warnings = "kivi: nothing was ever quantized (in 4 of 4 caches)";
    s.commit_run(r);
  }
  sqlite3* h = nullptr;
  REQUIRE(sqlite3_open(db.c_str(), &h) == SQLITE_OK);
  auto one = [&](const char* sql) {
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(h, sql, -1, &st, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    std::string v = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return v;
  };
  CHECK(one("SELECT warnings FROM runs") == "kivi: nothing was ever quantized (in 4 of 4 caches)");
  // Back to the version 2 layout by hand: the column gone, version '2'.
  REQUIRE(sqlite3_exec(h, "ALTER TABLE runs DROP COLUMN warnings; UPDATE meta SET value='2' WHERE key='schema_version'",
                       nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(h);
  {
    ResultsStore s(db);
    CHECK(s.count_runs("done") == 1);
  }
  REQUIRE(sqlite3_open(db.c_str(), &h) == SQLITE_OK);
  CHECK(one("SELECT value FROM meta WHERE key='schema_version'") == "3");
  CHECK(one("SELECT '[' || warnings || ']' FROM runs") == "[]");
  sqlite3_close(h);
}

TEST_CASE("store: a schema version 1 store is migrated in place, its runs become protocol evict") {
  test::TempDir dir;
  const std::string db = dir.file("v1.db");
  {  // the version 1 layout, written by hand: runs without a protocol column
    sqlite3* h = nullptr;
    REQUIRE(sqlite3_open(db.c_str(), &h) == SQLITE_OK);
    const char* v1 = R"sql(
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
INSERT INTO meta VALUES('schema', 'kvsim-results'), ('schema_version', '1'), ('created', 'x');
CREATE TABLE traces(id INTEGER PRIMARY KEY, path TEXT, content_hash TEXT UNIQUE, model TEXT,
  synthetic INTEGER, n_layers INTEGER, n_heads INTEGER, n_kv_heads INTEGER, head_dim INTEGER);
CREATE TABLE configs(id INTEGER PRIMARY KEY, strategy TEXT, spec TEXT, params_json TEXT, content_hash TEXT UNIQUE);
CREATE TABLE runs(id INTEGER PRIMARY KEY, config_id INTEGER REFERENCES configs(id),
  trace_id INTEGER REFERENCES traces(id), sequence TEXT, prefill INTEGER, stride INTEGER, n_tokens INTEGER,
  status TEXT, error TEXT, seconds REAL, host TEXT, kvsim_version TEXT, backend TEXT, finished TEXT,
  UNIQUE(config_id, trace_id, sequence, prefill, stride));
CREATE TABLE summaries(run_id INTEGER REFERENCES runs(id) ON DELETE CASCADE, layer INTEGER,
  head INTEGER, metric TEXT, mean REAL, p5 REAL, p50 REAL, p95 REAL, worst REAL, n INTEGER,
  PRIMARY KEY(run_id, layer, head, metric));
CREATE TABLE curves(run_id INTEGER REFERENCES runs(id) ON DELETE CASCADE, metric TEXT,
  bin INTEGER, pos_lo INTEGER, pos_hi INTEGER, value REAL, PRIMARY KEY(run_id, metric, bin));
INSERT INTO traces VALUES(1, 't.h5', 'abc', 'm', 0, 1, 1, 1, 8);
INSERT INTO configs VALUES(1, 'h2o', 'h2o:budget=8', '{}', 'def');
INSERT INTO runs VALUES(7, 1, 1, '0000', 128, 1, 512, 'done', NULL, 0.5, 'h', '0', 'ref', 'now');
INSERT INTO summaries VALUES(7, -1, -1, 'kl', 0.25, 0.25, 0.25, 0.25, 0.25, 10);
)sql";
    char* err = nullptr;
    REQUIRE(sqlite3_exec(h, v1, nullptr, nullptr, &err) == SQLITE_OK);
    sqlite3_close(h);
  }
  ResultsStore s(db);
  CHECK(s.done_runs() == std::set<RunKey>{RunKey{1, 1, "0000", 128, 1, "evict"}});
  // The same configuration under protocol prefill is another run; the old one and its rows stay.
  StoreRun r = make_run(1, 1, "done", 0.5);
  r.protocol = "prefill";
  s.commit_run(r);
  CHECK(s.count_runs("done") == 2);
  sqlite3* h = nullptr;
  REQUIRE(sqlite3_open(db.c_str(), &h) == SQLITE_OK);
  auto one = [&](const char* sql) {
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(h, sql, -1, &st, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    std::string v = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return v;
  };
  CHECK(one("SELECT value FROM meta WHERE key='schema_version'") == "3");  // through v2 to v3
  CHECK(one("SELECT '[' || warnings || ']' FROM runs WHERE id = 7") == "[]");
  CHECK(one("SELECT mean FROM summaries WHERE run_id = 7") == "0.25");  // not cascaded away
  CHECK(one("SELECT group_concat(protocol) FROM (SELECT protocol FROM runs ORDER BY protocol)") == "evict,prefill");
  CHECK(one("SELECT count(*) FROM results WHERE protocol = 'evict' AND metric = 'kl'") == "1");
  sqlite3_close(h);
}

TEST_CASE("store: a done run with a non-finite summary statistic is recorded failed, without rows") {
  test::TempDir dir;
  const std::string db = dir.file("r.db");
  ResultsStore s(db);
  const int64_t t = s.add_trace({"a.h5", "h1", "m", true, 2, 4, 2, 16});
  const int64_t c = s.add_config({"window", "window:budget=8", "{}"});
  StoreRun bad = make_run(c, t, "done", 0.25);
  bad.summaries[1].p95 = std::numeric_limits<double>::infinity();  // one head's p95 only
  s.commit_run(bad);
  StoreRun nan_run = make_run(c, t, "done", std::nan(""));
  nan_run.prefill = 64;
  s.commit_run(nan_run);
  s.commit_run(make_run(c, t, "done", 0.5));  // prefill 128 again: replaces the inf run
  CHECK(s.count_runs("done") == 1);
  CHECK(s.count_runs("failed") == 1);
  CHECK(s.done_runs().size() == 1);
  CHECK(scalar(db,
               "SELECT count(*) FROM runs WHERE prefill = 64 AND status = 'failed' AND "
               "error = 'the metric kl = nan (run summary) is not finite'") == 1);
  CHECK(scalar(db, "SELECT count(*) FROM summaries s JOIN runs r ON r.id = s.run_id WHERE r.prefill = 64") == 0);
  CHECK(scalar(db, "SELECT count(*) FROM curves c JOIN runs r ON r.id = c.run_id WHERE r.prefill = 64") == 0);
  // The inf in one head's p95 alone makes the run failed (seen before the good run replaced it).
  ResultsStore s2(dir.file("r2.db"));
  const int64_t t2 = s2.add_trace({"a.h5", "h1", "m", true, 2, 4, 2, 16});
  const int64_t c2 = s2.add_config({"window", "window:budget=8", "{}"});
  bad.config_id = c2, bad.trace_id = t2;
  s2.commit_run(bad);
  CHECK(s2.count_runs("failed") == 1);
  CHECK(scalar(dir.file("r2.db"),
               "SELECT count(*) FROM runs WHERE error = 'the metric kl = inf in layer 0, "
               "head 3 is not finite'") == 1);
}
