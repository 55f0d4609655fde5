// Native runner throughput: prefill and decode tokens/s for stories260K (real weights, skipped
// when ../shared/models is missing) and for a 7B-width slice (Llama-2-7B widths: dim 4096, FFN
// 11008, 32 heads of D = 128, vocab 32000, two layers, random weights), and the share of recording
// time spent inside the trace writer (counter write_share).
//   build/tests/bench_forward [--benchmark_filter=stories]
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <chrono>
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

using bench::ids_for;
using bench::pick;
using bench::slice7b;
using bench::stories;

// args: model (0 stories260K, 1 slice), T prompt tokens
void BM_prefill(benchmark::State& state) {
  const model::Model* m = pick(static_cast<int>(state.range(0)));
  if (!m) return state.SkipWithError("skipped: ../shared/models not found");
  const int64_t T = state.range(1);
  const auto ids = ids_for(*m, T);
  model::Runner r(*m, model::parse_runner_backend("cpu"));
  for (auto _ : state) {
    r.reset();
    benchmark::DoNotOptimize(r.forward(ids.data(), T));
  }
  state.SetItemsProcessed(state.iterations() * T);
  state.SetLabel(m->config.name);
}

// args: model, N decode steps from BOS (one token per forward call through the KV cache)
void BM_decode(benchmark::State& state) {
  const model::Model* m = pick(static_cast<int>(state.range(0)));
  if (!m) return state.SkipWithError("skipped: ../shared/models not found");
  const int64_t N = state.range(1);
  const auto ids = ids_for(*m, N);
  model::Runner r(*m, model::parse_runner_backend("cpu"));
  for (auto _ : state) {
    r.reset();
    for (int64_t i = 0; i < N; ++i) benchmark::DoNotOptimize(r.forward(&ids[static_cast<size_t>(i)], 1));
  }
  state.SetItemsProcessed(state.iterations() * N);
  state.SetLabel(m->config.name);
}

// args: model, T tokens recorded (prompt = all T, no generation: the recording pass alone), with o,
// compress (0/1: gzip + shuffle)
void BM_record(benchmark::State& state) {
  const model::Model* m = pick(static_cast<int>(state.range(0)));
  if (!m) return state.SkipWithError("skipped: ../shared/models not found");
  const int64_t T = state.range(1);
  model::PromptSpec p;
  p.ids = ids_for(*m, T);
  p.source = "bench";
  model::RecordOptions opt;
  opt.output = true;
  const std::string out =
      (fs::temp_directory_path() / ("kvsim_bench_record_" + std::to_string(::getpid()) + ".h5")).string();
  model::Runner r(*m, model::parse_runner_backend("cpu"));
  double write_s = 0, record_s = 0;
  for (auto _ : state) {
    traces::WriterOptions wo;
    wo.overwrite = true;
    wo.compress = state.range(2) != 0;
    traces::TraceWriter w(out, model::trace_header_for(*m, traces::DType::f32, "bench", "cpu"), wo);
    const auto st = model::record_sequence(r, nullptr, p, opt, w);
    const auto f0 = std::chrono::steady_clock::now();
    w.finish();  // flushes the chunk cache: with gzip, much of the compression happens here
    const double finish_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - f0).count();
    write_s += st.write_s + finish_s;
    record_s += st.record_s + finish_s;
  }
  fs::remove(out);
  state.SetItemsProcessed(state.iterations() * T);
  state.counters["write_share"] = write_s / std::max(record_s, 1e-12);
  state.SetLabel(m->config.name + ", q,k,v,o float32" + (state.range(2) ? ", gzip" : ""));
}

}  // namespace

BENCHMARK(BM_prefill)->Args({0, 512})->Args({1, 128})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_decode)->Args({0, 256})->Args({1, 16})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_record)
    ->Args({0, 512, 0})
    ->Args({0, 512, 1})
    ->Args({1, 128, 0})
    ->Args({1, 128, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_MAIN();
