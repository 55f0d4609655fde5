// The machine's fp32 FMA peak, measured: independent chains of 8-wide float FMAs (GCC vector
// extensions; with -march=native they compile to vfmadd on AVX2/AVX-512 registers), enough chains
// to cover FMA latency x throughput. One thread and all OpenMP threads. GFLOP/s = 2 per FMA lane.
#include <benchmark/benchmark.h>

#ifdef KVSIM_HAVE_OPENMP
#include <omp.h>
#endif

namespace {

typedef float v8sf __attribute__((vector_size(32)));
constexpr int kChains = 12;
constexpr long kIters = 1 << 20;

float fma_chains(float seed) {
  v8sf acc[kChains], a, b;
  for (int i = 0; i < 8; ++i) a[i] = 1.0f + 1e-7f * i, b[i] = seed * 1e-7f;
  for (int c = 0; c < kChains; ++c)
    for (int i = 0; i < 8; ++i) acc[c][i] = seed + c;
  for (long it = 0; it < kIters; ++it) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * a + b;
  }
  float s = 0;
  for (int c = 0; c < kChains; ++c)
    for (int i = 0; i < 8; ++i) s += acc[c][i];
  return s;
}

constexpr double kFlopsPerCall = 2.0 * 8 * kChains * kIters;

void BM_fma_peak_1thread(benchmark::State& st) {
  float s = 0;
  for (auto _ : st) benchmark::DoNotOptimize(s += fma_chains(s));
  st.counters["GFLOPs"] = benchmark::Counter(kFlopsPerCall * st.iterations() * 1e-9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_fma_peak_1thread)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_fma_peak_all_threads(benchmark::State& st) {
  int threads = 1;
  float s = 0;
  for (auto _ : st) {
#ifdef KVSIM_HAVE_OPENMP
#pragma omp parallel reduction(+ : s)
    {
      s += fma_chains(static_cast<float>(omp_get_thread_num()));
#pragma omp single
      threads = omp_get_num_threads();
    }
#else
    s += fma_chains(s);
#endif
    benchmark::DoNotOptimize(s);
  }
  st.counters["threads"] = threads;
  st.counters["GFLOPs"] =
      benchmark::Counter(kFlopsPerCall * threads * st.iterations() * 1e-9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_fma_peak_all_threads)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
