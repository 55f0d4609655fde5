// The GPU forward pass on a device ("cuda: ..." cases; without one they print "skipped: no CUDA
// device (...)", which ctest reports as skipped): each device op against sim/ref, the GPU runner's
// greedy decode of stories260K against the oracle, a GPU record against a CPU record; and the CLI's
// one-line refusal of --backend cuda where no device can run it.
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

#include "cuda/forward_ops.h"
#include "cuda_forward_test_util.h"
#include "cuda_test_util.h"
#include "model_test_util.h"
#include "sim/base/error.h"
#include "sim/kernels/forward_ops.h"
#include "traces/model/model.h"
#include "traces/model/recorder.h"
#include "traces/model/runner.h"
#include "traces/model/sampler.h"
#include "traces/model/tokenizer.h"
#include "traces/reader.h"

using namespace kvsim;
using namespace kvsim_test::cuda_fwd;

namespace {

template <typename T>
cuda::DeviceArray dev(const std::vector<T>& v) {
  return cuda::DeviceArray::from(v);
}

void device_attention_case(AttnCase& c, const char* what) {
  std::vector<float> o0(c.q.size());
  ref::attention(c.q.data(), c.views.data(), o0.data(), c.T, c.H, c.Hkv, c.D, c.pos0);
  auto q = dev(c.q), k = dev(c.k), v = dev(c.v), o = dev(std::vector<float>(c.q.size()));
  cuda::DeviceArray b, p;
  if (!c.bias.empty()) b = dev(c.bias), p = dev(c.pos);
  cuda::attention(q.as<float>(), k.as<float>(), v.as<float>(), c.bias.empty() ? nullptr : b.as<float>(),
                  c.pos.empty() ? nullptr : p.as<int64_t>(), o.as<float>(), c.T, c.H, c.Hkv, c.D, c.n, c.head_stride,
                  c.pos0);
  const auto o1 = o.to_vector<float>();
  // as the host emulation, plus the device's expf (<= 2 ulp, glibc's < 1 ulp) in every weight
  close(o1.data(), o0.data(), c.T * c.H * c.D, 1e-6, c.n > 1000 ? 2e-4 : 2e-5, what);
}

}  // namespace

TEST_CASE("cuda: device forward ops vs ref (seeds 1..4, T 1/31/33/97)") {
  if (!kvsim::test::cuda_device_or_skip()) return;
  uint64_t seed = 1;
  for (int64_t T : {1, 31, 33, 97}) {
    CAPTURE(T);
    const int64_t K = 67, N = 45;
    auto x = randn(static_cast<size_t>(T * K), seed), w = randn(static_cast<size_t>(N * K), seed + 100),
         b = randn(static_cast<size_t>(N), seed + 200);
    std::vector<float> y0(static_cast<size_t>(T * N));
    ref::matmul(x.data(), w.data(), b.data(), y0.data(), T, K, N);
    auto dx = dev(x), dw = dev(w), db = dev(b), dy = dev(y0);
    cuda::matmul(dx.as<float>(), dw.as<float>(), db.as<float>(), dy.as<float>(), T, K, N);
    // SGEMM sums in another order (FP32, TF32 off): as omp's sgemm, fp32 rounding of 67-term dots
    close(dy.to_vector<float>().data(), y0.data(), T * N, 1e-4, 1e-5, "cuda matmul");

    auto g = randn(static_cast<size_t>(K), seed + 300);
    std::vector<float> r0(x.size());
    ref::rmsnorm(x.data(), g.data(), r0.data(), T, K, 1e-5f);
    auto dg = dev(g), dr = dev(r0);
    cuda::rmsnorm(dx.as<float>(), dg.as<float>(), dr.as<float>(), T, K, 1e-5f);
    close(dr.to_vector<float>().data(), r0.data(), T * K, 1e-7, 4e-7 + 6e-8 * std::sqrt(double(K)),
          "cuda rmsnorm (tree sum, as emulated)");

    for (RopeStyle style : {RopeStyle::interleaved, RopeStyle::half}) {
      std::vector<float> a = randn(static_cast<size_t>(T * 5 * 16), seed + 800), inv(8);
      for (size_t i = 0; i < inv.size(); ++i) inv[i] = 1.0f / static_cast<float>(1 + 3 * i);
      auto da = dev(a), dinv = dev(inv);
      ref::rope(a.data(), T, 5, 16, 300, 10000.0, style, inv.data());
      cuda::rope(da.as<float>(), T, 5, 16, 300, 10000.0, style, dinv.as<float>());
      // device double pow/cos/sin are within 2 ulp of glibc's: cos and sin may round to a float
      // one ulp apart, so each rotated element may move by ~1 ulp of |x|
      close(da.to_vector<float>().data(), a.data(), T * 80, 1e-6, 1e-6, "cuda rope");
    }

    auto gate = randn(static_cast<size_t>(T * 33), seed + 900, 4.0f), up = randn(gate.size(), seed + 901);
    std::vector<float> s0(gate.size());
    ref::swiglu(gate.data(), up.data(), s0.data(), T * 33);
    auto dgate = dev(gate), dup = dev(up), ds = dev(s0);
    cuda::swiglu(dgate.as<float>(), dup.as<float>(), ds.as<float>(), T * 33);
    close(ds.to_vector<float>().data(), s0.data(), T * 33, 1e-7, 1e-6, "cuda swiglu (device expf, <= 2 ulp)");

    for (bool with_bias : {false, true}) {
      AttnCase c(T, 6, 2, 12, T + 5, 5, with_bias, seed + 1000);
      device_attention_case(c, "cuda attention");
    }
    auto am = randn(static_cast<size_t>(T * 41), seed + 1100);
    auto dam = dev(am);
    CHECK(cuda::argmax(dam.as<float>(), T * 41) == ref::argmax(am.data(), T * 41));
    ++seed;
  }
  AttnCase big(2, 32, 8, 128, 4097, 4095, false, 60);
  device_attention_case(big, "cuda attention over 4097 slots");
}

TEST_CASE("cuda: stories260K greedy from BOS for 256 steps on the GPU reproduces greedy_from_bos_256.json") {
  if (!kvsim::test::cuda_device_or_skip()) return;
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
  close(lg, want.data(), 40 * m.config.vocab_size, 1e-4, 1e-4, "GPU prefill logits vs ref");
  gpu.reset();
  std::vector<float> dec;
  for (int32_t t : ids) {
    const float* l = gpu.forward(&t, 1);
    dec.insert(dec.end(), l, l + m.config.vocab_size);
  }
  close(dec.data(), want.data(), 40 * m.config.vocab_size, 1e-4, 1e-4, "GPU decode vs ref prefill");
}

TEST_CASE("cuda: the GPU runner refuses strategy caches and host cache access, and rethrows a failing tap") {
  if (!kvsim::test::cuda_device_or_skip()) return;
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

TEST_CASE("cuda: a GPU record of stories260K equals a CPU record (q, k, v, q_pre, k_pre, o per layer)") {
  if (!kvsim::test::cuda_device_or_skip()) return;
  KVSIM_REQUIRE_MODELS();
  const model::Model m = model::load_model(kvsim_test::stories_bin());
  model::Llama2cTokenizer tok(kvsim_test::stories_tok());
  model::PromptSpec p;
  p.ids = tok.encode("Tom had a small red boat. He took it to the pond", true);
  p.source = "test";
  model::RecordOptions opt;
  opt.generate = 150, opt.pre = true, opt.output = true, opt.block = 64;  // several blocks, last one short
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("kvsim_test_cuda_record_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto record = [&](Backend b, const std::string& name) {
    traces::WriterOptions wo;
    wo.overwrite = true;
    const std::string path = (dir / name).string();
    traces::TraceWriter w(path, model::trace_header_for(m, traces::DType::f32, "test", b == Backend::cuda ? "cuda:test" : "cpu"), wo);
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
                              traces::Kind::k_pre, traces::Kind::o}) {
      CAPTURE(l);
      const auto a = gpu.read_layer(0, l, kind), b = cpu.read_layer(0, l, kind);
      REQUIRE(a.size() == b.size());
      // layer l's tensors carry l layers of SGEMM rounding in another order than the CPU's; values ~1-10
      close(a.data(), b.data(), static_cast<int64_t>(a.size()), 1e-4, 1e-4, "GPU vs CPU record");
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
  if (backend_available(Backend::cuda, &why)) {
    MESSAGE("not applicable: a CUDA device can run here");
    return;
  }
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
