// Reference statistics (sim/ref, sim/omp attn_stats) on a llama3-8b-shape slice: GFLOP/s, counting
// 2 flops per multiply-add of q·k and of p·v over the causal triangle: 4 D H T (T + 1) / 2.
// Compare with bench_peak (the measured fp32 FMA peak).
#include <benchmark/benchmark.h>

#include "sim/backend.h"
#include "sim/ref_stats.h"
#include "tests/bench/bench_common.h"

namespace {

void run(benchmark::State& st, kvsim::Backend b) {
  const int64_t T = st.range(0);
  auto& s = kvsim::bench::llama3_slice(T);
  kvsim::RefStats rs;
  for (auto _ : st) {
    kvsim::compute_ref_stats(s.lv, b, rs);
    benchmark::DoNotOptimize(rs.lse.data());
  }
  const double flops = 4.0 * s.lv.D * s.lv.H * double(T) * double(T + 1) / 2.0;
  st.counters["GFLOPs"] = benchmark::Counter(flops * st.iterations() * 1e-9, benchmark::Counter::kIsRate);
  st.counters["threads"] = b == kvsim::Backend::omp ? kvsim::omp_threads() : 1;
}

void BM_attn_stats_omp(benchmark::State& st) { run(st, kvsim::Backend::omp); }
void BM_attn_stats_ref(benchmark::State& st) { run(st, kvsim::Backend::ref); }
BENCHMARK(BM_attn_stats_omp)->Arg(512)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_attn_stats_ref)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
