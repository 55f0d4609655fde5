// GPU codec kernel throughput (cuda/quant.h, device-pointer variants): GB/s of float32 input
// quantized, or float32 output dequantized, on the llama-width tile of bench_codecs.cpp
// ([32768, 128] float32, 16 MiB), timed with CUDA events. Each timed iteration walks 16 copies of
// the tile (256 MiB), so no GPU's L2 cache holds the input between launches.
// Baseline in the same program: BM_cuda_d2d, a cudaMemcpy device to device over 256 MiB, counting
// bytes read + written (as bench_codecs.cpp's BM_memcpy does). Counters on every benchmark:
//   GBps   float32 bytes per second (input for quantize, output for dequantize; read + write for the copy)
//   x_d2d  GBps / the device-to-device copy's GBps
// x_d2d of BM_cuda_d2d itself is near 1 (the same copy, timed separately).
// Without a CUDA device, or in a build without CUDA, prints "skipped: no CUDA device (...)" and exits 0.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <string>

#include "cuda/device.h"

#if defined(KVSIM_HAVE_CUDA)
#include <cuda_runtime.h>

#include <random>
#include <vector>

#include "cuda/buffer.h"
#include "cuda/quant.h"

using namespace kvsim;

namespace {

constexpr int64_t kT = 32768, kD = 128;  // a llama-width cache slice, as in bench_codecs.cpp
constexpr int64_t kTile = kT * kD;
constexpr int kTiles = 16;  // 256 MiB of float32 input in all

// Tiles and outputs, [kTiles, ...] each, allocated once.
struct Gpu {
  cuda::Stream stream;
  cudaEvent_t start{}, stop{};
  cuda::DeviceBuffer<float> x, y;                       // [kTiles, kT, kD]
  cuda::DeviceBuffer<uint8_t> codes;                    // [kTiles, kTile] (8 bits at most)
  cuda::DeviceBuffer<uint16_t> scale, mn;               // [kTiles, kTile / 32]
  cuda::DeviceBuffer<float> absmax, dq_scale, dq_mean;  // [kTiles, kTile / 64], [kTiles, ...], [kTiles]
  cuda::DeviceBuffer<int8_t> absmax_q;                  // [kTiles, kTile / 64]

  Gpu() {
    KVSIM_CUDA_CHECK(cudaEventCreate(&start));
    KVSIM_CUDA_CHECK(cudaEventCreate(&stop));
    std::vector<float> h(static_cast<size_t>(kTile));
    std::mt19937 rng(1);
    std::normal_distribution<float> n;
    for (auto& e : h) e = n(rng);
    x.resize(kTiles * kTile), y.resize(kTiles * kTile), codes.resize(kTiles * kTile);
    scale.resize(kTiles * kTile / 32), mn.resize(kTiles * kTile / 32);
    absmax.resize(kTiles * kTile / 64), absmax_q.resize(kTiles * kTile / 64);
    dq_scale.resize(kTiles * ((kTile / 64 + 255) / 256)), dq_mean.resize(kTiles);
    for (int r = 0; r < kTiles; ++r)
      KVSIM_CUDA_CHECK(cudaMemcpy(x.data() + r * kTile, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  cudaStream_t s() const { return stream.get(); }
  cuda::UniformDevice uniform(int r) {
    return {codes.data() + r * kTile, scale.data() + r * kTile / 32, mn.data() + r * kTile / 32};
  }
  cuda::Nf4Device nf4(int r) {
    return {codes.data() + r * kTile, absmax.data() + r * kTile / 64, absmax_q.data() + r * kTile / 64,
            dq_scale.data() + r * ((kTile / 64 + 255) / 256), dq_mean.data() + r};
  }
};

Gpu& gpu() {
  static Gpu g;
  return g;
}

// Runs work(r) for every tile r per iteration, between two events; returns the GPU seconds.
template <typename Work>
double run_timed(benchmark::State& state, Work&& work) {
  Gpu& g = gpu();
  work(0);  // warm-up: first launch of each kernel
  g.stream.sync();
  double seconds = 0;
  for (auto _ : state) {
    KVSIM_CUDA_CHECK(cudaEventRecord(g.start, g.s()));
    for (int r = 0; r < kTiles; ++r) work(r);
    KVSIM_CUDA_CHECK(cudaEventRecord(g.stop, g.s()));
    KVSIM_CUDA_CHECK(cudaEventSynchronize(g.stop));
    float ms = 0;
    KVSIM_CUDA_CHECK(cudaEventElapsedTime(&ms, g.start, g.stop));
    state.SetIterationTime(ms / 1e3);
    seconds += ms / 1e3;
  }
  return seconds;
}

// The baseline: GB/s (read + write) of a 256 MiB device-to-device copy, measured once.
double d2d_gbps() {
  static const double gbps = [] {
    Gpu& g = gpu();
    const size_t n = static_cast<size_t>(kTiles * kTile) * sizeof(float);
    KVSIM_CUDA_CHECK(cudaMemcpyAsync(g.y.data(), g.x.data(), n, cudaMemcpyDeviceToDevice, g.s()));
    KVSIM_CUDA_CHECK(cudaEventRecord(g.start, g.s()));
    for (int i = 0; i < 10; ++i)
      KVSIM_CUDA_CHECK(cudaMemcpyAsync(g.y.data(), g.x.data(), n, cudaMemcpyDeviceToDevice, g.s()));
    KVSIM_CUDA_CHECK(cudaEventRecord(g.stop, g.s()));
    KVSIM_CUDA_CHECK(cudaEventSynchronize(g.stop));
    float ms = 0;
    KVSIM_CUDA_CHECK(cudaEventElapsedTime(&ms, g.start, g.stop));
    return 2.0 * 10 * static_cast<double>(n) / (ms / 1e3) / 1e9;
  }();
  return gbps;
}

void report(benchmark::State& state, double bytes, double seconds) {
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
  const double gbps = seconds > 0 ? bytes / seconds / 1e9 : 0;
  state.counters["GBps"] = gbps;
  state.counters["x_d2d"] = gbps / d2d_gbps();
}

void BM_cuda_d2d(benchmark::State& state) {
  Gpu& g = gpu();
  const size_t n = static_cast<size_t>(kTiles * kTile) * sizeof(float);
  const double s = run_timed(state, [&](int r) {
    if (r == 0) KVSIM_CUDA_CHECK(cudaMemcpyAsync(g.y.data(), g.x.data(), n, cudaMemcpyDeviceToDevice, g.s()));
  });
  report(state, 2.0 * static_cast<double>(n) * static_cast<double>(state.iterations()), s);
}

void BM_cuda_quant_uniform(benchmark::State& state) {
  const int bits = static_cast<int>(state.range(0));
  const QuantAxis axis = state.range(1) ? QuantAxis::channel : QuantAxis::token;
  Gpu& g = gpu();
  const double s = run_timed(state, [&](int r) {
    cuda::quant_uniform_device(g.x.data() + r * kTile, kT, kD, bits, axis, 32, g.uniform(r), g.s());
  });
  report(state, 4.0 * kTiles * kTile * static_cast<double>(state.iterations()), s);
  state.SetLabel("cuda " + std::to_string(bits) + "-bit " + (axis == QuantAxis::channel ? "channel" : "token"));
}

void BM_cuda_dequant_uniform(benchmark::State& state) {
  const int bits = static_cast<int>(state.range(0));
  Gpu& g = gpu();
  for (int r = 0; r < kTiles; ++r)
    cuda::quant_uniform_device(g.x.data() + r * kTile, kT, kD, bits, QuantAxis::token, 32, g.uniform(r), g.s());
  const double s = run_timed(state, [&](int r) {
    cuda::dequant_uniform_device(g.uniform(r), kT, kD, bits, QuantAxis::token, 32, g.y.data() + r * kTile, g.s());
  });
  report(state, 4.0 * kTiles * kTile * static_cast<double>(state.iterations()), s);
  state.SetLabel("cuda " + std::to_string(bits) + "-bit token");
}

void BM_cuda_quant_nf4(benchmark::State& state) {
  const bool dq = state.range(0) != 0;
  Gpu& g = gpu();
  const double s = run_timed(state, [&](int r) {
    cuda::quant_nf4_device(g.x.data() + r * kTile, kT, kD, QuantAxis::token, 64, dq, g.nf4(r), g.s());
  });
  report(state, 4.0 * kTiles * kTile * static_cast<double>(state.iterations()), s);
  state.SetLabel(dq ? "cuda dq" : "cuda");
}

void BM_cuda_dequant_nf4(benchmark::State& state) {
  const bool dq = state.range(0) != 0;
  Gpu& g = gpu();
  for (int r = 0; r < kTiles; ++r)
    cuda::quant_nf4_device(g.x.data() + r * kTile, kT, kD, QuantAxis::token, 64, dq, g.nf4(r), g.s());
  const double s = run_timed(state, [&](int r) {
    cuda::dequant_nf4_device(g.nf4(r), kT, kD, QuantAxis::token, 64, dq, g.y.data() + r * kTile, g.s());
  });
  report(state, 4.0 * kTiles * kTile * static_cast<double>(state.iterations()), s);
  state.SetLabel(dq ? "cuda dq" : "cuda");
}

}  // namespace

BENCHMARK(BM_cuda_d2d)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_cuda_quant_uniform)
    ->Args({8, 0})
    ->Args({4, 0})
    ->Args({2, 0})
    ->Args({4, 1})
    ->Args({2, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_cuda_dequant_uniform)->Arg(4)->Arg(2)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_cuda_quant_nf4)->Arg(0)->Arg(1)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_cuda_dequant_nf4)->Arg(0)->Arg(1)->UseManualTime()->Unit(benchmark::kMillisecond);
#endif  // KVSIM_HAVE_CUDA

int main(int argc, char** argv) {
  try {
    if (kvsim::cuda::device_count() < 1) {
      std::printf("skipped: no CUDA device (%s)\n", kvsim::cuda::device_error().c_str());
      return 0;
    }
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_quant: %s\n", e.what());
    return 1;
  }
  return 0;
}
