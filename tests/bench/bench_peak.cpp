// The machine's limits, measured, so that every speed figure can be quoted as a fraction of them:
//   fp32 FMA peak: independent chains of FMAs on the widest vectors the build targets, issued with
//     intrinsics (_mm512_fmadd_ps with AVX-512F, _mm256_fmadd_ps with AVX2+FMA), so that they are FMA
//     instructions whatever the contraction flags (kvsim builds with -ffp-contract=off, under which
//     `a * b + c` is a multiply and an add); enough chains to cover FMA latency x throughput. One
//     thread and all OpenMP threads. GFLOP/s = 2 per lane per FMA. Without FMA in the target
//     (a portable build) the counter `fma` is 0 and the figure is a multiply-add rate, not the peak.
//   memory bandwidth: a sum over a 512 MiB float array (reads only) and a copy of 256 MiB (read +
//     write), one thread and all threads, in GB/s of bytes moved.
#include <benchmark/benchmark.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <cstring>
#include <vector>

#ifdef KVSIM_HAVE_OPENMP
#include <omp.h>
#endif

namespace {

constexpr int kChains = 12;
constexpr long kIters = 1 << 20;

#if defined(__AVX512F__)
constexpr int kLanes = 16, kFma = 1;
using vec = __m512;
inline vec vset(float x) { return _mm512_set1_ps(x); }
inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
inline float vsum(vec a) {  // stored and summed (GCC 12 warns inside _mm512_reduce_add_ps)
  alignas(64) float t[16];
  _mm512_store_ps(t, a);
  float s = 0;
  for (float x : t) s += x;
  return s;
}
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kLanes = 8, kFma = 1;
using vec = __m256;
inline vec vset(float x) { return _mm256_set1_ps(x); }
inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(vec a) {
  alignas(32) float t[8];
  _mm256_store_ps(t, a);
  float s = 0;
  for (float x : t) s += x;
  return s;
}
#else
constexpr int kLanes = 8, kFma = 0;
typedef float vec __attribute__((vector_size(32)));
inline vec vset(float x) { return vec{x, x, x, x, x, x, x, x}; }
inline vec vfma(vec a, vec b, vec c) { return a * b + c; }  // not fused: a multiply-add rate
inline float vsum(vec a) {
  float s = 0;
  for (int i = 0; i < 8; ++i) s += a[i];
  return s;
}
#endif

float fma_chains(float seed) {
  vec acc[kChains];
  const vec a = vset(1.0f + 1e-7f), b = vset(seed * 1e-7f);
  for (int c = 0; c < kChains; ++c) acc[c] = vset(seed + static_cast<float>(c));
  for (long it = 0; it < kIters; ++it) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = vfma(acc[c], a, b);
  }
  float s = 0;
  for (int c = 0; c < kChains; ++c) s += vsum(acc[c]);
  return s;
}

constexpr double kFlopsPerCall = 2.0 * kLanes * kChains * kIters;

void BM_fma_peak_1thread(benchmark::State& st) {
  float s = 0;
  for (auto _ : st) benchmark::DoNotOptimize(s += fma_chains(s));
  st.counters["GFLOPs"] = benchmark::Counter(kFlopsPerCall * st.iterations() * 1e-9, benchmark::Counter::kIsRate);
  st.counters["lanes"] = kLanes;
  st.counters["fma"] = kFma;
}
BENCHMARK(BM_fma_peak_1thread)->Unit(benchmark::kMillisecond)->UseRealTime();

int n_threads() {
#ifdef KVSIM_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void BM_fma_peak_all_threads(benchmark::State& st) {
  float s = 0;
  for (auto _ : st) {
#ifdef KVSIM_HAVE_OPENMP
#pragma omp parallel reduction(+ : s)
    s += fma_chains(static_cast<float>(omp_get_thread_num()));
#else
    s += fma_chains(s);
#endif
    benchmark::DoNotOptimize(s);
  }
  st.counters["threads"] = n_threads();
  st.counters["lanes"] = kLanes;
  st.counters["fma"] = kFma;
  st.counters["GFLOPs"] =
      benchmark::Counter(kFlopsPerCall * n_threads() * st.iterations() * 1e-9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_fma_peak_all_threads)->Unit(benchmark::kMillisecond)->UseRealTime();

// Memory bandwidth. The arrays are written once before timing (pages faulted in); the sum keeps
// kChains-like independent partial sums so that the adds do not limit a read stream.
std::vector<float>& buffer(size_t n, int which) {
  static std::vector<float> b[2];
  if (b[which].size() != n) b[which].assign(n, 1.0f);
  return b[which];
}

double read_sum(const float* x, size_t n, bool parallel) {
  double total = 0;
  (void)parallel;
#ifdef KVSIM_HAVE_OPENMP
#pragma omp parallel for reduction(+ : total) schedule(static) if (parallel)
#endif
  for (long blk = 0; blk < static_cast<long>(n / 4096); ++blk) {
    float s[16] = {};
    const float* p = x + static_cast<size_t>(blk) * 4096;
    for (int i = 0; i < 4096; i += 16)
      for (int j = 0; j < 16; ++j) s[j] += p[i + j];
    float t = 0;
    for (float v : s) t += v;
    total += t;
  }
  return total;
}

void bandwidth_read(benchmark::State& st, bool parallel) {
  const size_t n = size_t(512) << 18;  // 512 MiB of floats
  const auto& x = buffer(n, 0);
  for (auto _ : st) benchmark::DoNotOptimize(read_sum(x.data(), n, parallel));
  st.counters["GBps"] = benchmark::Counter(4.0 * n * st.iterations() * 1e-9, benchmark::Counter::kIsRate);
  st.counters["threads"] = parallel ? n_threads() : 1;
}
void BM_bandwidth_read_1thread(benchmark::State& st) { bandwidth_read(st, false); }
void BM_bandwidth_read_all_threads(benchmark::State& st) { bandwidth_read(st, true); }
BENCHMARK(BM_bandwidth_read_1thread)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_bandwidth_read_all_threads)->Unit(benchmark::kMillisecond)->UseRealTime();

void bandwidth_copy(benchmark::State& st, bool parallel) {
  const size_t n = size_t(256) << 18;  // 256 MiB of floats, read and written
  auto& src = buffer(n, 0);
  auto& dst = buffer(n, 1);
  const long chunks = static_cast<long>(n / 65536);
  (void)parallel;
  for (auto _ : st) {
#ifdef KVSIM_HAVE_OPENMP
#pragma omp parallel for schedule(static) if (parallel)
#endif
    for (long c = 0; c < chunks; ++c)
      std::memcpy(dst.data() + c * 65536, src.data() + c * 65536, 65536 * sizeof(float));
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  st.counters["GBps"] = benchmark::Counter(2 * 4.0 * n * st.iterations() * 1e-9, benchmark::Counter::kIsRate);
  st.counters["threads"] = parallel ? n_threads() : 1;
}
void BM_bandwidth_copy_1thread(benchmark::State& st) { bandwidth_copy(st, false); }
void BM_bandwidth_copy_all_threads(benchmark::State& st) { bandwidth_copy(st, true); }
BENCHMARK(BM_bandwidth_copy_1thread)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_bandwidth_copy_all_threads)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
