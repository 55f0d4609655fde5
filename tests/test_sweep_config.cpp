// Sweep config parsing and grid expansion (tools/sweep_config.h). Expected spec lists are written
// out by hand from the configs in each case.
#include <doctest/doctest.h>

#include <fstream>

#include "sim/base/error.h"
#include "tests/trace_helpers.h"
#include "tools/sweep_config.h"

using namespace kvsim;
using namespace kvsim::tools;

namespace {
std::vector<std::string> specs(const SweepPlan& p) {
  std::vector<std::string> out;
  for (const auto& s : p.specs) out.push_back(s.spec);
  return out;
}
}  // namespace

TEST_CASE("sweep config: lists, ranges, pow2 and codecs expand to the cartesian product in order") {
  const char* text = R"(
name: t
traces: [/data/a.h5, /data/b.h5]
prefill: [64, trace]
stride: 4
strategies:
  - name: full
  - name: h2o
    grid:
      budget: [32, 64]
      norm: {from: 1, to: 2, step: 1}
  - name: window
    grid:
      budget: {pow2: [5, 6]}
    codecs: [none, {name: kivi, grid: {bits: [2, 4]}}]
  - name: streaming
    grid:
      ratio: {from: 0.25, to: 0.5, num: 2}
)";
  SweepPlan p = parse_sweep_config(text, "/cfg/t.yaml");
  CHECK(p.name == "t");
  CHECK(p.traces == std::vector<std::string>{"/data/a.h5", "/data/b.h5"});
  CHECK(p.prefills == std::vector<int64_t>{64, -1});
  CHECK(p.stride == 4);
  CHECK(specs(p) ==
        std::vector<std::string>{"full", "h2o:budget=32,norm=1", "h2o:budget=32,norm=2", "h2o:budget=64,norm=1",
                                 "h2o:budget=64,norm=2", "window:budget=32", "window:budget=32+kivi:bits=2",
                                 "window:budget=32+kivi:bits=4", "window:budget=64", "window:budget=64+kivi:bits=2",
                                 "window:budget=64+kivi:bits=4", "streaming:ratio=0.25", "streaming:ratio=0.5"});
  CHECK(p.specs[1].line == 8);
}

TEST_CASE("sweep config: an entry's own prefill and protocol replace the root's for its configurations") {
  const char* text = R"(
traces: [/data/a.h5]
prefill: [trace, 64]
strategies:
  - name: h2o
    grid: {budget: [8]}
  - name: kvzip
    grid: {budget: [8]}
    prefill: 384
    protocol: prefill
  - name: h2o
    grid: {budget: [8, 16]}
    prefill: [context, 64]
    protocol: [evict, sparse]
)";
  SweepPlan p = parse_sweep_config(text, "/cfg/t.yaml");
  // The root's list, then what the entries add, once each.
  CHECK(p.prefills == std::vector<int64_t>{-1, 64, 384, -2});
  REQUIRE(specs(p) == std::vector<std::string>{"h2o:budget=8", "kvzip:budget=8", "h2o:budget=16"});
  CHECK(p.specs[0].prefills == std::vector<int64_t>{-1, 64, -2});  // the same spec twice: both lists
  CHECK(p.specs[1].prefills == std::vector<int64_t>{384});
  CHECK(p.specs[2].prefills == std::vector<int64_t>{-2, 64});
  // protocol: the same (the root's: evict).
  CHECK(p.protocols == std::vector<std::string>{"evict", "prefill", "sparse"});
  CHECK(p.specs[0].protocols == std::vector<std::string>{"evict", "sparse"});
  CHECK(p.specs[1].protocols == std::vector<std::string>{"prefill"});
  CHECK(p.specs[2].protocols == std::vector<std::string>{"evict", "sparse"});
  CHECK_THROWS_WITH_AS(parse_sweep_config("traces: [/a.h5]\nstrategies:\n  - {name: h2o, protocol: grow}\n", "t.yaml"),
                       doctest::Contains("grow"), UsageError);
  CHECK_THROWS_WITH_AS(parse_sweep_config("traces: [/a.h5]\nstrategies:\n  - {name: h2o, prefill: -3}\n", "t.yaml"),
                       doctest::Contains("prefill = -3 must be >= 0"), UsageError);
  CHECK_THROWS_WITH_AS(parse_sweep_config("traces: [/a.h5]\nstrategies:\n  - {name: h2o, prefill: []}\n", "t.yaml"),
                       doctest::Contains("prefill is an empty list"), UsageError);
}

TEST_CASE("sweep config: relative trace paths and globs resolve against the config's folder") {
  test::TempDir dir;
  std::ofstream(dir.file("b.h5")) << "x";
  std::ofstream(dir.file("a.h5")) << "x";
  std::ofstream(dir.file("c.txt")) << "x";
  const std::string cfg = dir.file("s.yaml");
  std::ofstream(cfg) << "traces: ['*.h5', sub/../c.txt]\nstrategies: [{name: full}]\n";
  SweepPlan p = load_sweep_config(cfg);
  CHECK(p.traces == std::vector<std::string>{dir.file("a.h5"), dir.file("b.h5"), dir.file("c.txt")});
  CHECK(p.name == "s");
  CHECK(p.prefills == std::vector<int64_t>{-1});
}

TEST_CASE("sweep config: errors name the file, line and column") {
  auto err = [](const std::string& text) {
    try {
      parse_sweep_config(text, "c.yaml");
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(err("traces: [a.h5]\nstrategies:\n  - name: h2o\n    grid: {budget: [32, 64}\n").rfind("c.yaml:4:", 0) == 0);
  CHECK(err("traces: [a.h5]\nstrategies: [{name: full}]\nbudget: 3\n") ==
        "c.yaml:3:1: unknown key 'budget' in the sweep config (valid: name, traces, sequences, prefill, protocol, "
        "stride, backend, strategies)");
  CHECK(err("traces: [a.h5]\nstride: 0\nstrategies: [{name: full}]\n") == "c.yaml:2:9: stride = 0 must be >= 1");
  CHECK(err("traces: [a.h5]\nstrategies:\n  - name: h2o\n    grid: {budget: {from: 8, to: 4, step: 1}}\n") ==
        "c.yaml:4:20: the range of 'budget' has to < from");
  CHECK(err("strategies: [{name: full}]\n") == "c.yaml:1:1: missing key 'traces'");
  CHECK(err("traces: [a.h5]\nstrategies:\n  - nme: h2o\n") ==
        "c.yaml:3:5: unknown key 'nme' in a strategy entry (valid: name, grid, codecs, prefill, protocol)");
  CHECK(err("traces: ['/nonexistent-dir-kvsim/*.h5']\nstrategies: [{name: full}]\n") ==
        "c.yaml:1:10: glob '/nonexistent-dir-kvsim/*.h5' matches no file");
  CHECK(err("- a\n- b\n").find("must be a mapping") != std::string::npos);
  CHECK_THROWS_AS(load_sweep_config("/nonexistent.yaml"), UsageError);
}
