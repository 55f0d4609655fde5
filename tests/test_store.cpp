// The SQLite results store (sim/store/store.h). Expected rows are the ones the test itself wrote.
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <fstream>

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
  CHECK(s.done_runs().count(RunKey{c1, t1, "0000", 128, 1}) == 1);
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
  const std::string want = db + std::string(": results store schema_version = '99' but this kvsim writes version 1 (use a new --db file)");
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
