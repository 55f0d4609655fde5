// `kvsim run` through the binary (KVSIM_BIN): bad input gives one line on stderr listing the valid
// choices and exit code 2; --json follows design.md §6.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "sim/kernels/backend.h"
#include "traces/synth.h"

namespace fs = std::filesystem;

namespace {

struct Out {
  int code = -1;
  std::string out, err;
};

fs::path dir() {
  static fs::path d = [] {
    fs::path p = fs::temp_directory_path() / ("kvsim_test_cli_" + std::to_string(::getpid()));
    fs::create_directories(p);
    return p;
  }();
  return d;
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

Out run_kvsim(const std::string& args) {
  const fs::path o = dir() / "stdout", e = dir() / "stderr";
  const std::string cmd = std::string(KVSIM_BIN) + " " + args + " >" + o.string() + " 2>" + e.string();
  const int st = std::system(cmd.c_str());
  Out r;
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.out = slurp(o), r.err = slurp(e);
  return r;
}

std::string trace() {
  static std::string p = [] {
    std::string path = (dir() / "tiny.h5").string();
    kvsim::traces::SynthOptions o;
    o.tokens = 60, o.seed = 2, o.prefill = 20;
    kvsim::traces::write_synthetic_trace(path, kvsim::traces::find_synth_shape("tiny"), o);
    return path;
  }();
  return p;
}

int lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

void expect_usage_error(const std::string& args, const std::string& needle) {
  Out r = run_kvsim("run --trace " + trace() + " --quiet --stats-cache off " + args);
  INFO("kvsim run " << args << "\nstderr: " << r.err);
  CHECK(r.code == 2);
  CHECK(lines(r.err) == 1);
  CHECK(r.err.find(needle) != std::string::npos);
  CHECK(r.out.empty());
}

}  // namespace

TEST_CASE("cli run: bad input is one line, exit 2, listing the valid choices") {
  // The list is the registry's (strategy_names(), tested in test_sim_strategies.cpp): its ends here.
  expect_usage_error("--strategy nope:budget=3",
                     "unknown strategy 'nope' (valid: full, window, streaming, h2o, tova, ");
  expect_usage_error("--strategy nope:budget=3",
                     ", shadowkv; wrappers: adakv.BASE, chunkkv.BASE, criticalkv.BASE, headkv.BASE; codecs: quant, "
                     "kivi, nf4, fp8, int8)");
  expect_usage_error("--strategy adakv.nope:budget=3", "unknown strategy 'nope' (valid: full, window");
  expect_usage_error("--strategy adakv.knorm:budget=3", "adakv wraps a scorer, and knorm exposes no per-token scores");
  expect_usage_error("--strategy h2o:budget=16,bugdet=3", "unknown parameter 'bugdet' for h2o (valid: budget, ratio");
  expect_usage_error("--strategy h2o:budget=8,sinks=4,recent=4", "budget 8 must exceed sinks + recent = 4 + 4");
  expect_usage_error("--strategy streaming:budget=3", "budget 3 must exceed sinks + recent = 4 + 0");
  expect_usage_error("--strategy full --prefill 60", "prefill P = 60 must satisfy 1 <= P < T = 60");
  expect_usage_error("--strategy full --prefill 0", "prefill P = 0 must satisfy 1 <= P < T = 60");
  expect_usage_error("--strategy full --stride 0", "stride = 0 must be >= 1");
  expect_usage_error("--strategy full --stride -2", "stride = -2 must be >= 1");
  expect_usage_error("--strategy full --backend gpu", "unknown backend 'gpu' (choose ref, omp, cuda or auto)");
  expect_usage_error("--strategy h2o:budget=8,gqa=median", "gqa=median is not one of mean, max, sum");
  // The test trace has no q_pre (synthesized without --pre).
  expect_usage_error("--strategy expected_attention:budget=8",
                     "expected_attention needs q_pre (record with kvsim record --pre)");
  // Codecs and composition (the test trace has D = 16).
  expect_usage_error("--strategy quant:bits=3", "quant: bits=3 is not supported (choose 2, 4, 8)");
  expect_usage_error("--strategy kivi:bits=8", "kivi: bits=8 is not supported (choose 2, 4)");
  expect_usage_error("--strategy quant:bits=4,group=6", "quant keys: group=6 does not divide D = 16");
  expect_usage_error("--strategy kivi:bits=2,vgroup=12", "kivi values: group=12 does not divide D = 16");
  expect_usage_error("--strategy nf4:block=24", "nf4 keys: block=24 neither divides nor is a multiple of D = 16");
  expect_usage_error("--strategy h2o:budget=16+kivi:bits=2+nf4", "a strategy composes with one codec at most");
  expect_usage_error("--strategy kivi:bits=2+nf4", "two codecs cannot be composed ('kivi' is a codec)");
  expect_usage_error("--strategy h2o:budget=16+window:budget=8",
                     "'window' after '+' is not a codec (valid: quant, kivi, nf4, fp8, int8)");
  expect_usage_error("--strategy nf4:dq=2", "nf4: dq=2 must be 0 or 1");
  expect_usage_error("--strategy fp8:format=e3m4", "format=e3m4 is not one of e4m3, e5m2");
  expect_usage_error("--strategy fp8:scale=channel", "scale=channel is not one of tensor, one, dynamic, head, token");
  expect_usage_error("--strategy int8:group=6", "int8: group=6 does not divide D = 16");
  expect_usage_error("--strategy int8:sym=0", "int8: sym=0 is not supported");
  expect_usage_error("--strategy cms_topk:budget=16,width=0", "count-min sketch width = 0 must be >= 1");
  expect_usage_error("--strategy cms_topk:budget=16,depth=-1", "depth=-1 must be in [0, 2147483647]");
  expect_usage_error("--strategy entropy_merge:budget=16,threshold=1.5",
                     "entropy_merge: threshold=1.500000 must be in [0, 1]");
}

TEST_CASE("cli run: --backend cuda runs on a device, and without a CUDA build or device is one line, exit 2") {
  Out r = run_kvsim("run --trace " + trace() + " --quiet --stats-cache off --strategy full --backend cuda");
  std::string why;
  if (kvsim::backend_available(kvsim::Backend::cuda, &why)) {
    CHECK(r.code == 0);
    CHECK(r.out.find("backend cuda") != std::string::npos);
    return;
  }
  CHECK(r.code == 2);
  CHECK(lines(r.err) == 1);
  CHECK(r.err == "kvsim: error: " + why + "\n");
}

// A trace with no sequences: tests/py/test_run_cli.py (h5py deletes the only sequence; the
// writer refuses to produce such a file).

TEST_CASE("cli run: table and JSON (design.md §6)") {
  Out t = run_kvsim("run --trace " + trace() + " --quiet --stats-cache off --strategy full --strategy h2o:budget=16");
  CHECK(t.code == 0);
  CHECK(t.out.find("h2o:budget=16") != std::string::npos);
  CHECK(t.err.empty());
  Out r = run_kvsim("run --trace " + trace() +
                    " --quiet --stats-cache off --json --strategy full "
                    "--strategy window:ratio=0.25 --prefill 30 --stride 2");
  REQUIRE(r.code == 0);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["trace"] == trace());
  CHECK(j["prefill"] == 30);
  REQUIRE(j["results"].size() == 2);
  CHECK(j["results"][0]["strategy"] == "full");
  CHECK(j["results"][1]["strategy"] == "window");
  CHECK(j["results"][1]["params"]["ratio"] == "0.25");
  for (const char* m : {"out_cos", "out_rel_l2", "mass", "kl", "tv", "topk8_recall", "topk32_recall", "logit_rel_err",
                        "k_rel_err", "v_rel_err", "bytes", "ratio"})
    for (const char* s : {"mean", "p5", "p50", "p95", "worst"}) CHECK(j["results"][1]["summary"][m][s].is_number());
  CHECK(j["results"][0]["summary"]["out_cos"]["worst"].get<double>() >= 1 - 1e-6);
  // window at ratio 0.25 of T = 60: 15 slots, 16 while attending; D = 16 -> 16 x 64 bytes.
  CHECK(j["results"][1]["summary"]["bytes"]["worst"].get<double>() == 16 * 64.0);
}
