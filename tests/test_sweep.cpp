// Sweep pieces with hand-checked answers: shard parsing, the Pareto front and the best point under
// a budget (tools/best.h), and configuration identity in the store (tools/sweep.h).
#include <doctest/doctest.h>

#include <fstream>

#include "sim/base/error.h"
#include "tests/trace_helpers.h"
#include "tools/best.h"
#include "tools/sweep.h"

using namespace kvsim;
using namespace kvsim::tools;

TEST_CASE("sweep: --shard I/N parsing") {
  CHECK(parse_shard("") == std::pair<int64_t, int64_t>{0, 1});
  CHECK(parse_shard("3/4") == std::pair<int64_t, int64_t>{3, 4});
  CHECK_THROWS_AS(parse_shard("4/4"), UsageError);
  CHECK_THROWS_AS(parse_shard("-1/4"), UsageError);
  CHECK_THROWS_AS(parse_shard("1/0"), UsageError);
  CHECK_THROWS_AS(parse_shard("1"), UsageError);
  CHECK_THROWS_AS(parse_shard("1/2x"), UsageError);
  CHECK(default_db_path("/a/b/quick.yaml") == "/a/b/quick.db");
}

TEST_CASE("best: Pareto front and best under a budget, both metric directions") {
  auto P = [](const char* spec, double ratio, double value) {
    BestPoint p;
    p.strategy = "s", p.spec = spec, p.ratio = ratio, p.value = value, p.runs = 1;
    return p;
  };
  // lower is better (kl): a(0.1, 5) b(0.2, 3) c(0.2, 4) d(0.3, 3) e(0.5, 1) f(0.4, 0.5)
  std::vector<BestPoint> pts = {P("a", 0.1, 5), P("b", 0.2, 3), P("c", 0.2, 4),
                                P("d", 0.3, 3), P("e", 0.5, 1), P("f", 0.4, 0.5)};
  CHECK(pareto_front(pts, false) ==
        std::vector<size_t>{0, 1, 5});      // a, b, f (d ties b at a higher ratio; e is beaten by f)
  CHECK(best_under(pts, 0.3, false) == 1);  // b: 3 at 0.2 beats d: 3 at 0.3
  CHECK(best_under(pts, 0.05, false) == -1);
  CHECK(best_under(pts, 1.0, false) == 5);
  // higher is better (out_cos): the same numbers read the other way
  CHECK(pareto_front(pts, true) == std::vector<size_t>{0});
  CHECK(best_under(pts, 0.3, true) == 0);
  std::vector<BestPoint> q = {P("x", 0.5, 0.9), P("y", 0.25, 0.8), P("z", 1.0, 1.0), P("w", 0.25, 0.7)};
  CHECK(pareto_front(q, true) == std::vector<size_t>{1, 0, 2});
}

TEST_CASE("sweep: configurations are identified by their resolved parameters") {
  test::TempDir dir;
  const std::string cfg = dir.file("s.yaml");
  std::ofstream(cfg)
      << "traces: [" << KVSIM_SOURCE_DIR << "/traces/samples/stories260K.h5]\n"
      << "sequences: [cookies]\nstrategies:\n  - name: h2o\n    grid: {budget: [64]}\n"
      << "  - name: h2o\n    grid: {budget: [64], gqa: [mean]}\n  - name: window\n    grid: {budget: [8]}\n";
  SweepOptions o;
  o.config = cfg;
  SweepWork w = prepare_sweep(o);
  REQUIRE(w.configs.size() == 2);  // gqa=mean is h2o's default: the same configuration
  CHECK(w.configs[0].canonical.rfind("h2o:budget=64,", 0) == 0);
  CHECK(w.configs[0].canonical.find("gqa=mean") != std::string::npos);
  CHECK(w.configs[0].strategy == "h2o");
  CHECK(w.configs[1].canonical == "window:budget=8");
  CHECK(w.groups.size() == 1);
  CHECK(w.groups[0].sequence == "cookies");
  CHECK(w.total_runs == 2);
  std::ofstream(cfg)
      << "traces: [" << KVSIM_SOURCE_DIR << "/traces/samples/stories260K.h5]\n"
      << "strategies:\n  - name: window\n    grid: {budget: [8]}\n  - name: h2o\n    grid: {bugdet: [3]}\n";
  try {
    prepare_sweep(o);
    FAIL("no error");
  } catch (const UsageError& e) {
    CHECK(std::string(e.what()).rfind(cfg + ":5: ", 0) == 0);  // the h2o entry
  }
}

TEST_CASE("sweep: protocol lists, and a configuration runs under the protocols it fits") {
  test::TempDir dir;
  const std::string cfg = dir.file("p.yaml");
  std::ofstream(cfg) << "traces: [" << KVSIM_SOURCE_DIR << "/traces/samples/stories260K.h5]\n"
                     << "sequences: [cookies]\nprefill: [64, 128]\nprotocol: [evict, prefill, sparse]\n"
                     << "strategies:\n  - name: h2o\n    grid: {budget: [32, 64]}\n"
                     << "  - name: oracle_topk\n    grid: {budget: [32]}\n";
  SweepOptions o;
  o.config = cfg;
  const SweepWork w = prepare_sweep(o);
  REQUIRE(w.groups.size() == 6);  // 2 prefills x 3 protocols, protocols innermost
  CHECK(w.groups[0].protocol == Protocol::evict);
  CHECK(w.groups[1].protocol == Protocol::prefill);
  CHECK(w.groups[2].protocol == Protocol::sparse);
  CHECK(w.groups[3].prefill == 128);
  // h2o (2 configurations) under evict and prefill, oracle_topk (1) under sparse: per prefill 2 + 2 + 1.
  CHECK(w.total_runs == 2 * (2 + 2 + 1));
  std::ofstream(cfg) << "traces: [" << KVSIM_SOURCE_DIR << "/traces/samples/stories260K.h5]\n"
                     << "protocol: [evict, grow]\nstrategies:\n  - name: window\n    grid: {budget: [8]}\n";
  try {
    prepare_sweep(o);
    FAIL("no error");
  } catch (const UsageError& e) {
    CHECK(std::string(e.what()).rfind(cfg + ":2:", 0) == 0);
    CHECK(std::string(e.what()).find("protocol 'grow' is not one of") != std::string::npos);
  }
  std::ofstream(cfg) << "traces: [" << KVSIM_SOURCE_DIR << "/traces/samples/stories260K.h5]\n"
                     << "protocol: sparse\nstrategies:\n  - name: window\n    grid: {budget: [8]}\n";
  CHECK_THROWS_AS(prepare_sweep(o), UsageError);  // nothing would run
}
