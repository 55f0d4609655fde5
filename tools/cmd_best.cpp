// kvsim best --db F --metric M [--max-ratio R] [--format text|markdown|csv|json] [--per-strategy]:
// the Pareto front of memory ratio against a metric, overall and per strategy, the best
// configuration under the memory budget, and a comparison table of strategies (tools/best.h).
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "sim/base/error.h"
#include "sim/metrics.h"
#include "sim/strategies/strategy.h"
#include "tools/best.h"
#include "tools/commands.h"

namespace kvsim::tools {

namespace {

struct BestArgs {
  std::string db, metric, format = "text";
  double max_ratio = std::numeric_limits<double>::infinity();
  bool per_strategy = false;
  BestFilter filter;
};

struct Table {
  std::string title;
  std::vector<std::string> cols;
  std::vector<std::vector<std::string>> rows;
};

std::string fmt(double x) {
  if (!std::isfinite(x)) return "nan";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", x);
  return buf;
}

std::string fmt_exact(double x) {  // CSV is read by programs: every digit
  if (!std::isfinite(x)) return "nan";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}

std::string csv_cell(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string o = "\"";
  for (char c : s) o += c == '"' ? std::string("\"\"") : std::string(1, c);
  return o + "\"";
}

void print_table(const Table& t, const std::string& format) {
  if (format == "markdown") {
    std::printf("\n**%s**\n\n|", t.title.c_str());
    for (const auto& c : t.cols) std::printf(" %s |", c.c_str());
    std::printf("\n|");
    for (size_t i = 0; i < t.cols.size(); ++i) std::printf(i < 2 ? " --- |" : " ---: |");
    std::printf("\n");
    for (const auto& r : t.rows) {
      std::printf("|");
      for (size_t i = 0; i < r.size(); ++i)  // specs hold '|'-free text but '_' and '*' are Markdown
        std::printf(i == 1 ? " `%s` |" : " %s |", r[i].c_str());
      std::printf("\n");
    }
    return;
  }
  std::vector<size_t> w(t.cols.size());
  for (size_t i = 0; i < t.cols.size(); ++i) w[i] = t.cols[i].size();
  for (const auto& r : t.rows)
    for (size_t i = 0; i < r.size(); ++i) w[i] = std::max(w[i], r[i].size());
  std::printf("\n%s\n", t.title.c_str());
  auto line = [&](const std::vector<std::string>& r) {
    std::string out;
    char buf[512];
    for (size_t i = 0; i < r.size(); ++i) {
      std::snprintf(buf, sizeof buf, i < 2 ? "%-*s" : "%*s", static_cast<int>(w[i]), r[i].c_str());
      out += (i ? "  " : "") + std::string(buf);
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    std::printf("%s\n", out.c_str());
  };
  line(t.cols);
  for (const auto& r : t.rows) line(r);
}

struct PerStrategy {
  int64_t best = -1;  // index into Answer::pts
  std::vector<size_t> front;
  size_t configurations = 0;
  double min_ratio = std::numeric_limits<double>::infinity();
};

// Everything `best` reports, computed once for every format.
struct Answer {
  std::string metric, budget;
  bool higher = false;
  std::vector<BestPoint> pts;
  std::vector<size_t> front;
  int64_t best = -1;
  std::map<std::string, PerStrategy> per;
};

Answer answer(const BestArgs& a, int m) {
  Answer r;
  r.metric = metric_name(m);
  r.higher = higher_is_better(m);
  r.budget = std::isinf(a.max_ratio) ? "none" : fmt(a.max_ratio);
  if (!a.filter.protocol.empty()) (void)parse_protocol(a.filter.protocol);  // one line, exit 2, when unknown
  r.pts = load_points(a.db, m, a.filter);
  r.front = pareto_front(r.pts, r.higher);
  r.best = best_under(r.pts, a.max_ratio, r.higher);
  std::map<std::string, std::vector<size_t>> by_strategy;
  for (size_t i = 0; i < r.pts.size(); ++i) by_strategy[r.pts[i].strategy].push_back(i);
  for (const auto& [name, idx] : by_strategy) {
    std::vector<BestPoint> sub;
    for (size_t i : idx) sub.push_back(r.pts[i]);
    PerStrategy ps;
    ps.configurations = idx.size();
    const int64_t b = best_under(sub, a.max_ratio, r.higher);
    ps.best = b < 0 ? -1 : static_cast<int64_t>(idx[b]);
    for (size_t j : pareto_front(sub, r.higher)) ps.front.push_back(idx[j]);
    for (const auto& p : sub) ps.min_ratio = std::min(ps.min_ratio, p.ratio);
    r.per[name] = ps;
  }
  return r;
}

void print_json(const BestArgs& a, const Answer& r) {
  auto pj = [&](int64_t i) -> nlohmann::json {
    if (i < 0) return nullptr;
    const auto& p = r.pts[i];
    return {{"strategy", p.strategy}, {"spec", p.spec}, {"ratio", p.ratio}, {r.metric, p.value}, {"runs", p.runs}};
  };
  nlohmann::json j;
  j["db"] = a.db;
  j["metric"] = r.metric;
  j["higher_is_better"] = r.higher;
  j["max_ratio"] = std::isinf(a.max_ratio) ? nlohmann::json(nullptr) : nlohmann::json(a.max_ratio);
  j["configurations"] = r.pts.size();
  j["best"] = pj(r.best);
  j["front"] = nlohmann::json::array();
  for (size_t i : r.front) j["front"].push_back(pj(static_cast<int64_t>(i)));
  j["per_strategy"] = nlohmann::json::object();
  for (const auto& [name, ps] : r.per) {
    nlohmann::json s{{"best", pj(ps.best)}, {"configurations", ps.configurations}};
    s["front"] = nlohmann::json::array();
    for (size_t i : ps.front) s["front"].push_back(pj(static_cast<int64_t>(i)));
    j["per_strategy"][name] = s;
  }
  std::printf("%s\n", json_text(j).c_str());
}

void print_csv(const BestArgs& a, const Answer& r) {
  std::printf("table,strategy,spec,ratio,%s,runs\n", r.metric.c_str());
  auto emit = [&](const char* table, size_t i) {
    const auto& p = r.pts[i];
    std::printf("%s,%s,%s,%s,%s,%lld\n", table, csv_cell(p.strategy).c_str(), csv_cell(p.spec).c_str(),
                fmt_exact(p.ratio).c_str(), fmt_exact(p.value).c_str(), (long long)p.runs);
  };
  if (r.best >= 0) emit("best", static_cast<size_t>(r.best));
  for (const auto& [name, ps] : r.per)
    if (ps.best >= 0) emit("strategy_best", static_cast<size_t>(ps.best));
  for (size_t i : r.front) emit("front", i);
  if (a.per_strategy)
    for (const auto& [name, ps] : r.per)
      for (size_t i : ps.front) emit("strategy_front", i);
}

// text and markdown: the answer line, the comparison of strategies, the fronts.
void print_tables(const BestArgs& a, const Answer& r) {
  const bool md = a.format == "markdown";
  const std::vector<std::string> cols = {"strategy", "spec", "ratio", r.metric, "runs"};
  auto row = [&](size_t i) {
    const auto& p = r.pts[i];
    return std::vector<std::string>{p.strategy, p.spec, fmt(p.ratio), fmt(p.value), std::to_string(p.runs)};
  };
  std::vector<Table> tables;
  Table cmp{"Strategies compared: the best configuration of each with ratio <= " + r.budget,
            {"strategy", "best spec", "ratio", r.metric, "runs", "front size", "min ratio"},
            {}};
  for (const auto& [name, ps] : r.per) {
    std::vector<std::string> x =
        ps.best >= 0 ? row(static_cast<size_t>(ps.best)) : std::vector<std::string>{name, "(none fits)", "-", "-", "-"};
    x.push_back(std::to_string(ps.front.size()));
    x.push_back(fmt(ps.min_ratio));
    cmp.rows.push_back(x);
  }
  tables.push_back(cmp);
  Table fr{"Pareto front, all strategies (ratio lower is better; " + r.metric + (r.higher ? " higher" : " lower") +
               " is better)",
           cols,
           {}};
  for (size_t i : r.front) fr.rows.push_back(row(i));
  tables.push_back(fr);
  if (a.per_strategy)
    for (const auto& [name, ps] : r.per) {
      Table t{"Pareto front of " + name, cols, {}};
      for (size_t i : ps.front) t.rows.push_back(row(i));
      tables.push_back(t);
    }
  std::printf("%s%s: %zu configurations, metric %s (%s is better), memory ratio <= %s\n", md ? "" : "kvsim best ",
              a.db.c_str(), r.pts.size(), r.metric.c_str(), r.higher ? "higher" : "lower", r.budget.c_str());
  if (r.best >= 0) {
    const auto& p = r.pts[r.best];
    std::printf("%sbest under the budget: %s (ratio %s, %s %s, %lld runs)%s\n", md ? "**" : "", p.spec.c_str(),
                fmt(p.ratio).c_str(), r.metric.c_str(), fmt(p.value).c_str(), (long long)p.runs, md ? "**" : "");
  } else {
    double lo = std::numeric_limits<double>::infinity();
    for (const auto& p : r.pts) lo = std::min(lo, p.ratio);
    std::printf("no configuration fits ratio <= %s (the smallest ratio is %s)\n", r.budget.c_str(), fmt(lo).c_str());
  }
  for (const auto& t : tables) print_table(t, a.format);
}

int run_best(const BestArgs& a) {
  const int m = parse_metric(a.metric);
  if (a.format != "text" && a.format != "markdown" && a.format != "csv" && a.format != "json")
    throw UsageError("--format '" + a.format + "' is not one of text, markdown, csv, json");
  if (!(a.max_ratio > 0)) throw UsageError("--max-ratio " + fmt(a.max_ratio) + " must be > 0");
  const Answer r = answer(a, m);
  if (a.format == "json")
    print_json(a, r);
  else if (a.format == "csv")
    print_csv(a, r);
  else
    print_tables(a, r);
  return 0;
}

}  // namespace

void add_best(CLI::App& app) {
  auto a = std::make_shared<BestArgs>();
  CLI::App* c = app.add_subcommand(
      "best", "Grid-search answers from a results store: Pareto front and best under a memory budget");
  c->add_option("--db", a->db, "results store written by kvsim sweep")->required();
  c->add_option("--metric", a->metric, "metric to optimise (kl, out_cos, mass, tv, ...)")->required();
  c->add_option("--max-ratio", a->max_ratio, "memory budget: mean ratio (bytes / fp16 full cache) <= R");
  c->add_option("--format", a->format, "text, markdown, csv or json")->capture_default_str();
  c->add_flag("--per-strategy", a->per_strategy, "also print each strategy's Pareto front");
  c->add_option("--sequence", a->filter.sequence, "only runs of this sequence (default: mean over all)");
  c->add_option("--prefill", a->filter.prefill, "only runs with this prefill P (default: mean over all)");
  c->add_option("--protocol", a->filter.protocol,
                "only runs of this protocol: evict, prefill or sparse (default: each protocol its own point)");
  c->add_option("--trace", a->filter.trace, "only runs of traces whose path contains this text");
  c->callback([a] { exit_status() = run_best(*a); });
}

}  // namespace kvsim::tools
