// GPU runner throughput and what recording costs on top of it (issue 8): for stories260K (real
// weights, skipped when ../shared/models is missing) and a 7B-width slice (Llama-2-7B widths, two
// layers, random weights), the recording pass (prefill in blocks of 256) run three ways:
//   BM_cuda_forward  plain forward, no tap                               -> tokens/s
//   BM_cuda_tap      every layer's q, k, v, o copied to pinned host memory and handed to an empty
//                    tap on the writer thread                             -> counter overhead
//   BM_cuda_record   record_sequence into a trace (float32, no gzip)      -> counter overhead
// overhead = seconds per token of the variant / seconds per token of the plain forward (measured
// alongside, same runner). Without CUDA or a device it prints "skipped: no CUDA device (...)" and
// exits 0.
//   build/tests/bench_cuda_forward [--benchmark_filter=stories]
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "sim/kernels/backend.h"
#include "tests/bench/bench_models.h"
#include "traces/model/model.h"
#include "traces/model/recorder.h"
#include "traces/model/runner.h"

using namespace kvsim;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kBlock = 256;

using bench::ids_for;
using bench::pick;
using bench::slice7b;
using bench::stories;

double seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The recording pass without recording: T tokens in blocks; returns seconds.
double plain_pass(model::Runner& r, const std::vector<int32_t>& ids, const model::LayerTap& tap = {}) {
  const auto t0 = std::chrono::steady_clock::now();
  r.reset();
  const int64_t T = static_cast<int64_t>(ids.size());
  model::TapKinds kinds;
  kinds.pre = false;
  for (int64_t t = 0; t < T; t += kBlock) r.forward(ids.data() + t, std::min(kBlock, T - t), false, tap, kinds);
  r.wait_taps();
  return seconds(t0);
}

// Seconds of the plain pass, best of 3 after a warm-up (the reference for every overhead).
double plain_reference(model::Runner& r, const std::vector<int32_t>& ids) {
  plain_pass(r, ids);
  double best = 1e30;
  for (int i = 0; i < 3; ++i) best = std::min(best, plain_pass(r, ids));
  return best;
}

// args: model (0 stories260K, 1 slice), T tokens
void BM_cuda_forward(benchmark::State& state) {
  const model::Model* m = pick(static_cast<int>(state.range(0)));
  if (!m) return state.SkipWithError("skipped: ../shared/models not found");
  const auto ids = ids_for(*m, state.range(1));
  model::Runner r(*m, Backend::cuda);
  plain_pass(r, ids);
  for (auto _ : state) plain_pass(r, ids);
  state.SetItemsProcessed(state.iterations() * state.range(1));
  state.SetLabel(m->config.name);
}

void BM_cuda_tap(benchmark::State& state) {
  const model::Model* m = pick(static_cast<int>(state.range(0)));
  if (!m) return state.SkipWithError("skipped: ../shared/models not found");
  const auto ids = ids_for(*m, state.range(1));
  model::Runner r(*m, Backend::cuda);
  const double plain_s = plain_reference(r, ids);
  volatile float sink = 0;
  model::LayerTap tap = [&sink](const model::LayerTensors& lt) { sink = sink + lt.q[0] + lt.k[0] + lt.v[0] + lt.o[0]; };
  double s = 0;
  for (auto _ : state) s += plain_pass(r, ids, tap);
  state.SetItemsProcessed(state.iterations() * state.range(1));
  state.counters["overhead"] = s / static_cast<double>(state.iterations()) / plain_s;
  state.SetLabel(m->config.name + ", q,k,v,o to pinned host memory, empty tap");
}

void BM_cuda_record(benchmark::State& state) {
  const model::Model* m = pick(static_cast<int>(state.range(0)));
  if (!m) return state.SkipWithError("skipped: ../shared/models not found");
  model::PromptSpec p;
  p.ids = ids_for(*m, state.range(1));
  p.source = "bench";
  model::RecordOptions opt;
  opt.output = true;
  opt.block = kBlock;
  const std::string out =
      (fs::temp_directory_path() / ("kvsim_bench_cuda_record_" + std::to_string(::getpid()) + ".h5")).string();
  model::Runner r(*m, Backend::cuda);
  const double plain_s = plain_reference(r, p.ids);
  double s = 0, write_s = 0;
  for (auto _ : state) {
    traces::WriterOptions wo;
    wo.overwrite = true;
    const auto t0 = std::chrono::steady_clock::now();
    traces::TraceWriter w(out, model::trace_header_for(*m, traces::DType::f32, "bench", "cuda"), wo);
    const auto st = model::record_sequence(r, nullptr, p, opt, w);
    w.finish();
    s += seconds(t0);
    write_s += st.write_s;
  }
  fs::remove(out);
  state.SetItemsProcessed(state.iterations() * state.range(1));
  state.counters["overhead"] = s / static_cast<double>(state.iterations()) / plain_s;
  state.counters["write_s"] = write_s / static_cast<double>(state.iterations());
  state.SetLabel(m->config.name + ", q,k,v,o float32 trace");
}

}  // namespace

BENCHMARK(BM_cuda_forward)->Args({0, 512})->Args({1, 1024})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_cuda_tap)->Args({0, 512})->Args({1, 1024})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_cuda_record)->Args({0, 512})->Args({1, 1024})->Unit(benchmark::kMillisecond)->UseRealTime();

int main(int argc, char** argv) {
  std::string why;
  if (!backend_available(Backend::cuda, &why)) {
    std::printf("skipped: no CUDA device (%s)\n", why.c_str());
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
