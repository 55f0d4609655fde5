#include "tools/best.h"

#include <sqlite3.h>

#include <algorithm>
#include <cmath>

#include "sim/base/error.h"
#include "sim/metrics.h"
#include "sim/store/store.h"

namespace kvsim::tools {

namespace {
// a is better than b on the metric.
bool better(double a, double b, bool higher) { return higher ? a > b : a < b; }

std::vector<size_t> order(const std::vector<BestPoint>& pts, bool higher) {
  std::vector<size_t> idx(pts.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
    const auto &x = pts[a], &y = pts[b];
    if (x.ratio != y.ratio) return x.ratio < y.ratio;
    if (x.value != y.value) return better(x.value, y.value, higher);
    return x.spec < y.spec;
  });
  return idx;
}
}  // namespace

std::vector<size_t> pareto_front(const std::vector<BestPoint>& pts, bool higher_better) {
  std::vector<size_t> out;
  for (size_t i : order(pts, higher_better)) {
    if (!std::isfinite(pts[i].value) || !std::isfinite(pts[i].ratio)) continue;
    // Sorted by ratio: a point is on the front iff it beats every point of lower-or-equal ratio.
    if (out.empty() || better(pts[i].value, pts[out.back()].value, higher_better)) out.push_back(i);
  }
  return out;
}

int64_t best_under(const std::vector<BestPoint>& pts, double max_ratio, bool higher_better) {
  int64_t best = -1;
  for (size_t i : order(pts, higher_better)) {
    if (!(pts[i].ratio <= max_ratio) || !std::isfinite(pts[i].value)) continue;
    if (best < 0 || better(pts[i].value, pts[best].value, higher_better)) best = static_cast<int64_t>(i);
  }
  return best;
}

std::vector<BestPoint> load_points(const std::string& db, int metric, const BestFilter& filter) {
  // Read-only (a store in a read-only folder works); refuses non-stores and other schema versions.
  const ResultsStore store(db, StoreMode::read);
  sqlite3* h = store.handle();
  const char* sql =
      "SELECT c.strategy, c.spec, CASE WHEN count(r_.mean) = count(*) THEN avg(r_.mean) END, "
      "CASE WHEN count(m_.mean) = count(*) THEN avg(m_.mean) END, count(*), r.protocol FROM runs r "
      "JOIN configs c ON c.id = r.config_id JOIN traces t ON t.id = r.trace_id "
      "JOIN summaries r_ ON r_.run_id = r.id AND r_.layer = -1 AND r_.head = -1 AND r_.metric = 'ratio' "
      "JOIN summaries m_ ON m_.run_id = r.id AND m_.layer = -1 AND m_.head = -1 AND m_.metric = ?1 "
      "WHERE r.status = 'done' AND (?2 = '' OR r.sequence = ?2) AND (?3 < 0 OR r.prefill = ?3) "
      "AND (?4 = '' OR instr(t.path, ?4) > 0) AND (?5 = '' OR r.protocol = ?5) "
      "GROUP BY c.id, r.protocol ORDER BY c.id, r.protocol";
  sqlite3_stmt* s = nullptr;
  std::vector<BestPoint> out;
  if (sqlite3_prepare_v2(h, sql, -1, &s, nullptr) != SQLITE_OK) {
    throw IoError(db + ": SQL error: " + sqlite3_errmsg(h));
  }
  sqlite3_bind_text(s, 1, metric_name(metric), -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, filter.sequence.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(s, 3, filter.prefill);
  sqlite3_bind_text(s, 4, filter.trace.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(s, 5, filter.protocol.c_str(), -1, SQLITE_TRANSIENT);
  int rc;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    BestPoint p;
    p.strategy = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
    p.spec = reinterpret_cast<const char*>(sqlite3_column_text(s, 1));
    p.ratio = sqlite3_column_type(s, 2) == SQLITE_NULL ? NAN : sqlite3_column_double(s, 2);
    p.value = sqlite3_column_type(s, 3) == SQLITE_NULL ? NAN : sqlite3_column_double(s, 3);
    p.runs = sqlite3_column_int64(s, 4);
    p.protocol = reinterpret_cast<const char*>(sqlite3_column_text(s, 5));
    if (p.protocol != "evict") p.spec += " [" + p.protocol + "]";
    out.push_back(p);
  }
  std::string err = rc == SQLITE_DONE ? "" : sqlite3_errmsg(h);
  sqlite3_finalize(s);
  if (!err.empty()) throw IoError(db + ": SQL error: " + err);
  if (out.empty()) {
    const bool filtered =
        !filter.sequence.empty() || filter.prefill >= 0 || !filter.trace.empty() || !filter.protocol.empty();
    throw UsageError(db + (filtered ? ": no finished runs match --sequence/--prefill/--trace/--protocol"
                                    : ": the results store has no finished runs (run kvsim sweep first)"));
  }
  return out;
}

}  // namespace kvsim::tools
