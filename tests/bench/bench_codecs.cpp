// Codec kernel throughput (GB/s of float32 input quantized, or float32 output dequantized) for the
// ref and omp backends, against the machine's memory bandwidth measured here the same way
// (BM_memcpy: bytes read + written by memcpy over a buffer far larger than the caches).
// tools/scripts/bench_report.py prints them as ratios: BM_memcpy is the baseline.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "sim/kernels/quant.h"

using namespace kvsim;

namespace {

constexpr int64_t kT = 32768, kD = 128;  // 16 MiB of float32: a llama-width cache slice

const std::vector<float>& data() {
  static std::vector<float> x = [] {
    std::vector<float> v(static_cast<size_t>(kT * kD));
    std::mt19937 rng(1);
    std::normal_distribution<float> n;
    for (auto& e : v) e = n(rng);
    return v;
  }();
  return x;
}

void BM_memcpy(benchmark::State& state) {
  const size_t n = size_t{256} << 20;
  std::vector<char> a(n, 1), b(n, 2);
  for (auto _ : state) {
    std::memcpy(b.data(), a.data(), n);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * 2 * n));
}

template <bool Omp>
void BM_quant_uniform(benchmark::State& state) {
  const int bits = static_cast<int>(state.range(0));
  const QuantAxis axis = state.range(1) ? QuantAxis::channel : QuantAxis::token;
  const auto& x = data();
  for (auto _ : state) {
    auto q = Omp ? omp::quant_uniform(x.data(), kT, kD, bits, axis, 32)
                 : ref::quant_uniform(x.data(), kT, kD, bits, axis, 32);
    benchmark::DoNotOptimize(q.codes.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * x.size() * 4));
  state.SetLabel(std::string(Omp ? "omp" : "ref") + " " + std::to_string(bits) + "-bit " +
                 (axis == QuantAxis::channel ? "channel" : "token"));
}

template <bool Omp>
void BM_dequant_uniform(benchmark::State& state) {
  const int bits = static_cast<int>(state.range(0));
  const auto& x = data();
  auto q = ref::quant_uniform(x.data(), kT, kD, bits, QuantAxis::token, 32);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    if (Omp)
      omp::dequant_uniform(q, y.data());
    else
      ref::dequant_uniform(q, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * y.size() * 4));
  state.SetLabel(std::string(Omp ? "omp" : "ref") + " " + std::to_string(bits) + "-bit token");
}

template <bool Omp>
void BM_nf4(benchmark::State& state) {
  const bool dq = state.range(0) != 0;
  const auto& x = data();
  for (auto _ : state) {
    auto q = Omp ? omp::quant_nf4(x.data(), kT, kD, QuantAxis::token, 64, dq)
                 : ref::quant_nf4(x.data(), kT, kD, QuantAxis::token, 64, dq);
    benchmark::DoNotOptimize(q.codes.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * x.size() * 4));
  state.SetLabel(std::string(Omp ? "omp" : "ref") + (dq ? " dq" : ""));
}

}  // namespace

BENCHMARK(BM_memcpy)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_quant_uniform, false)->Args({4, 0})->Args({2, 1})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_quant_uniform, true)
    ->Args({8, 0})
    ->Args({4, 0})
    ->Args({2, 0})
    ->Args({4, 1})
    ->Args({2, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_dequant_uniform, false)->Arg(4)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_dequant_uniform, true)->Arg(4)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_nf4, false)->Arg(0)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_nf4, true)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
