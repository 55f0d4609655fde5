// The GPU forward pass on a device ("cuda: ..." cases; without one ctest reports them skipped,
// tests/skip.h): the GPU runner's greedy decode of stories260K against the oracle, a GPU record
// against a CPU record; and the CLI's one-line refusal of --backend cuda where no device can run
// it. Each device op against sim/ref is in the harness (tests/test_backend_forward.cpp).
// Tolerances are |x - ref| <= atol + rtol |ref|.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "sim/base/error.h"
#include "tests/backend_harness.h"
#include "tests/model_test_util.h"
#include "traces/model/model.h"
#include "traces/model/recorder.h"
#include "traces/model/runner.h"
#include "traces/model/sampler.h"
#include "traces/model/tokenizer.h"
#include "traces/reader.h"

using namespace kvsim;

TEST_CASE("cuda: stories260K greedy from BOS for 256 steps on the GPU reproduces greedy_from_bos_256.json") {
  KVSIM_REQUIRE_CUDA_DEVICE();
  KVSIM_REQUIRE_MODELS();
  std::ifstream in(kvsim_test::models_dir() + "/stories260K/greedy_from_bos_256.json");
  const auto expect = nlohmann::json::parse(in).at("greedy_ids").get<std::vector<int32_t>>();
  const model::Model m = model::load_model(kvsim_test::stories_bin());
  model::Runner gpu(m, model::parse_runner_backend("cuda"));
  CHECK(gpu.backend() == Backend::cuda);
  model::Sampler greedy({});
  std::vector<int32_t> got;
  int32_t tok = 1;
  for (int i = 0; i < 256; ++i) {
    tok = greedy.next(gpu.forward(&tok, 1), m.config.vocab_size);
    got.push_back(tok);
  }
  CHECK(got == expect);

  // prefill logits of 40 tokens against ref's, and GPU decode against GPU prefill
  const std::vector<int32_t> ids(got.begin(), got.begin() + 40);
  model::Runner ref(m, Backend::ref);
  const float* lr = ref.forward(ids.data(), 40, true);
  const std::vector<float> want(lr, lr + 40 * m.config.vocab_size);
  gpu.reset();
  const float* lg = gpu.forward(ids.data(), 40, true);
  // 5 layers of SGEMM summing in another order than ref's loops (and the device's expf); the
  // residual stream carries each layer's rounding on: logits of magnitude ~10
  kvsim::test::check_close("GPU prefill logits vs ref", lg, want.data(), want.size(), {1e-4, 1e-4});
  gpu.reset();
  std::vector<float> dec;
  for (int32_t t : ids) {
    const float* l = gpu.forward(&t, 1);
    dec.insert(dec.end(), l, l + m.config.vocab_size);
  }
  kvsim::test::check_close("GPU decode vs ref prefill", dec, want, {1e-4, 1e-4});
}

TEST_CASE("cuda: the GPU runner refuses strategy caches and host cache access, and rethrows a failing tap") {
  KVSIM_REQUIRE_CUDA_DEVICE();
  model::ModelConfig c;
  c.name = "tiny random", c.hf_architecture = "LlamaForCausalLM";
  c.dim = 48, c.hidden_dim = 80, c.n_layers = 3, c.n_heads = 6, c.n_kv_heads = 2, c.head_dim = 8;
  c.vocab_size = 97, c.seq_len = 64;
  const model::Model m = model::random_model(c, 5);
  CHECK_THROWS_AS(model::Runner(m, Backend::cuda, full_cache_factory()), NotCompiled);
  model::Runner gpu(m, Backend::cuda);
  CHECK_THROWS_AS(gpu.cache(0, 0), NotCompiled);
  const std::vector<int32_t> ids = {1, 5, 9, 33, 2, 96, 40};
  int calls = 0;
  auto bad = [&calls](const model::LayerTensors& lt) {
    ++calls;
    if (lt.layer == 1) throw IoError("disk full (test)");
  };
  gpu.forward(ids.data(), 7, false, bad);
  CHECK_THROWS_AS(gpu.wait_taps(), IoError);
  CHECK(calls == 2);  // layer 2's tap is skipped once one failed
  gpu.reset();
  CHECK_NOTHROW(gpu.forward(ids.data(), 7));  // the runner is usable again
}

TEST_CASE("cuda: a GPU record of stories260K equals a CPU record (q, k, v, q_pre, k_pre, o, vo_norm per layer)") {
  KVSIM_REQUIRE_CUDA_DEVICE();
  KVSIM_REQUIRE_MODELS();
  const model::Model m = model::load_model(kvsim_test::stories_bin());
  model::Llama2cTokenizer tok(kvsim_test::stories_tok());
  model::PromptSpec p;
  p.ids = tok.encode("Tom had a small red boat. He took it to the pond", true);
  p.source = "test";
  model::RecordOptions opt;
  opt.generate = 150, opt.pre = true, opt.output = true, opt.block = 64;  // several blocks, last one short
  opt.vo_norm = true;  // computed on the host from the v each backend recorded
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("kvsim_test_cuda_record_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto record = [&](Backend b, const std::string& name) {
    traces::WriterOptions wo;
    wo.overwrite = true;
    const std::string path = (dir / name).string();
    traces::TraceWriter w(
        path, model::trace_header_for(m, traces::DType::f32, "test", b == Backend::cuda ? "cuda:test" : "cpu"), wo);
    model::Runner r(m, b);
    model::record_sequence(r, nullptr, p, opt, w);
    w.finish();
    return path;
  };
  traces::TraceReader cpu(record(model::parse_runner_backend("cpu"), "cpu.h5"));
  traces::TraceReader gpu(record(Backend::cuda, "gpu.h5"));
  REQUIRE(gpu.sequence(0).n_tokens == cpu.sequence(0).n_tokens);
  // pass 1 generated the same continuation (greedy, no near-ties in 150 steps of this prompt)
  REQUIRE(gpu.sequence(0).n_tokens == static_cast<int64_t>(p.ids.size()) + 150);
  for (int64_t l = 0; l < m.config.n_layers; ++l)
    for (traces::Kind kind : {traces::Kind::q, traces::Kind::k, traces::Kind::v, traces::Kind::q_pre,
                              traces::Kind::k_pre, traces::Kind::o, traces::Kind::vo_norm}) {
      CAPTURE(l);
      const auto a = gpu.read_layer(0, l, kind), b = cpu.read_layer(0, l, kind);
      REQUIRE(a.size() == b.size());
      // layer l's tensors carry l layers of SGEMM rounding in another order than the CPU's; values ~1-10
      kvsim::test::check_close("GPU vs CPU record", a.data(), b.data(), a.size(), {1e-4, 1e-4});
    }
  // the CLI marks the trace with the device
  const std::string out = (dir / "cli.h5").string();
  const std::string cmd = std::string(KVSIM_BIN) + " record --model " + kvsim_test::stories_bin() +
                          " --prompt 'Once upon a time' --generate 20 --backend cuda --quiet --out " + out;
  REQUIRE(std::system(cmd.c_str()) == 0);
  CHECK(traces::TraceReader(out).header().device.rfind("cuda:", 0) == 0);
  fs::remove_all(dir);
}

TEST_CASE("cli record/generate: --backend cuda without CUDA or a device exits 2 with one line") {
  std::string why;
  if (backend_available(Backend::cuda, &why)) KVSIM_SKIP("a CUDA device can run here: nothing to refuse");
  namespace fs = std::filesystem;
  const fs::path err = fs::temp_directory_path() / ("kvsim_test_cuda_cli_" + std::to_string(::getpid()) + ".err");
  for (const std::string args : {"record --model nonexistent.bin --prompt hi --out never.h5 --backend cuda",
                                 "generate --model nonexistent.bin --prompt hi --backend cuda"}) {
    CAPTURE(args);
    const int st = std::system((std::string(KVSIM_BIN) + " " + args + " 2>" + err.string()).c_str());
    CHECK(WIFEXITED(st));
    CHECK(WEXITSTATUS(st) == 2);
    std::ifstream f(err);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string e = ss.str();
    CHECK(std::count(e.begin(), e.end(), '\n') == 1);
    CHECK(e.find("backend cuda") != std::string::npos);
    CHECK(e.find(why) != std::string::npos);
  }
  CHECK(!fs::exists("never.h5.partial"));
  fs::remove(err);
}
