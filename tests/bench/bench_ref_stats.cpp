// Reference statistics (sim/ref, sim/omp, cuda attn_stats) on a llama3-8b-shape slice: GFLOP/s,
// counting 2 flops per multiply-add of q·k and of p·v over the causal triangle: 4 D H T (T + 1) / 2.
// CPU: compare with bench_peak (the measured fp32 FMA peak). GPU: the counters `of_fp32_peak` and
// `of_fp64_peak` divide by the device's measured peaks (cuda::measured_peak_gflops); the kernel's
// dot products and sums are double, like ref's, so the fp64 fraction is the one that says how well
// it uses the device. The GPU cases include the host<->device copies. Without a device they are
// not registered and the program says "skipped: no CUDA device (...)".
#include <benchmark/benchmark.h>

#include <cstdio>
#include <string>
#include <vector>

#include "cuda/device.h"
#include "sim/exact_stats.h"
#include "sim/kernels/backend.h"
#include "tests/bench/bench_common.h"

namespace {

double g_peak32 = 0, g_peak64 = 0;

void run(benchmark::State& st, kvsim::Backend b) {
  const int64_t T = st.range(0);
  auto& s = kvsim::bench::llama3_slice(T);
  kvsim::ExactStats rs;
  for (auto _ : st) {
    kvsim::compute_exact_stats(s.lv, b, rs);
    benchmark::DoNotOptimize(rs.lse.data());
  }
  const double flops = 4.0 * s.lv.D * s.lv.H * double(T) * double(T + 1) / 2.0;
  st.counters["GFLOPs"] = benchmark::Counter(flops * st.iterations() * 1e-9, benchmark::Counter::kIsRate);
  st.counters["threads"] = b == kvsim::Backend::omp ? kvsim::omp_threads() : 1;
  if (b == kvsim::Backend::cuda) {
    st.counters["of_fp32_peak"] =
        benchmark::Counter(flops * st.iterations() * 1e-9 / g_peak32, benchmark::Counter::kIsRate);
    st.counters["of_fp64_peak"] =
        benchmark::Counter(flops * st.iterations() * 1e-9 / g_peak64, benchmark::Counter::kIsRate);
  }
}

// The prompt's column sums (h2o's starting scores) over P = T queries, from the lse of one
// attn_stats run: 2 D H P (P + 1) / 2 flops of q·k counted.
void run_colsums(benchmark::State& st, kvsim::Backend b) {
  const int64_t T = st.range(0);
  auto& s = kvsim::bench::llama3_slice(T);
  kvsim::ExactStats rs;
  kvsim::compute_exact_stats(s.lv, kvsim::Backend::omp, rs);
  std::vector<float> colsum;
  for (auto _ : st) {
    kvsim::compute_prompt_colsums(s.lv, rs, T, b, colsum);
    benchmark::DoNotOptimize(colsum.data());
  }
  const double flops = 2.0 * s.lv.D * s.lv.H * double(T) * double(T + 1) / 2.0;
  st.counters["GFLOPs"] = benchmark::Counter(flops * st.iterations() * 1e-9, benchmark::Counter::kIsRate);
  st.counters["threads"] = b == kvsim::Backend::omp ? kvsim::omp_threads() : 1;
}

void BM_attn_stats_omp(benchmark::State& st) { run(st, kvsim::Backend::omp); }
void BM_prompt_colsums_omp(benchmark::State& st) { run_colsums(st, kvsim::Backend::omp); }
void BM_prompt_colsums_ref(benchmark::State& st) { run_colsums(st, kvsim::Backend::ref); }
void BM_attn_stats_ref(benchmark::State& st) { run(st, kvsim::Backend::ref); }
void BM_attn_stats_cuda(benchmark::State& st) { run(st, kvsim::Backend::cuda); }
BENCHMARK(BM_attn_stats_omp)->Arg(512)->Arg(2048)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_attn_stats_ref)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_prompt_colsums_omp)->Arg(512)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_prompt_colsums_ref)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  std::string why;
  if (kvsim::backend_available(kvsim::Backend::cuda, &why)) {
    g_peak32 = kvsim::cuda::measured_peak_gflops(false);
    g_peak64 = kvsim::cuda::measured_peak_gflops(true);
    std::printf("%s: measured peak %.0f GFLOP/s fp32, %.0f GFLOP/s fp64\n", kvsim::cuda::device_name().c_str(),
                g_peak32, g_peak64);
    benchmark::RegisterBenchmark("BM_attn_stats_cuda", BM_attn_stats_cuda)
        ->Arg(512)
        ->Arg(2048)
        ->Arg(4096)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  } else {
    std::printf("skipped: no CUDA device (%s): GPU cases not run\n", why.c_str());
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
