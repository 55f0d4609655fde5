#include <cstdlib>

#include "cuda/check.h"
#include "cuda/device.h"

#include "cuda/buffer.h"

namespace kvsim::cuda {

namespace {

constexpr int kPeakChains = 8, kPeakIters = 4096;

template <typename F>
__global__ void fma_peak_kernel(F a, F b, F* out) {
  F acc[kPeakChains];
  for (int c = 0; c < kPeakChains; ++c) acc[c] = static_cast<F>(threadIdx.x + c);
  for (int it = 0; it < kPeakIters; ++it)
#pragma unroll
    for (int c = 0; c < kPeakChains; ++c) acc[c] = fma(acc[c], a, b);
  F s = 0;
  for (int c = 0; c < kPeakChains; ++c) s += acc[c];
  if (s == static_cast<F>(-1.2345)) out[0] = s;  // never true; keeps the chains alive
}

template <typename F>
double peak_of() {
  cudaDeviceProp p{};
  KVSIM_CUDA_CHECK(cudaGetDeviceProperties(&p, select_device()));
  const int threads = 256, blocks = p.multiProcessorCount * 8;
  DeviceBuffer<F> out(1);
  cudaEvent_t e0, e1;
  KVSIM_CUDA_CHECK(cudaEventCreate(&e0));
  KVSIM_CUDA_CHECK(cudaEventCreate(&e1));
  float best_ms = 1e30f;
  for (int rep = 0; rep < 5; ++rep) {  // the first run warms the clocks up
    KVSIM_CUDA_CHECK(cudaEventRecord(e0));
    fma_peak_kernel<F><<<blocks, threads>>>(static_cast<F>(0.999999), static_cast<F>(1e-7), out.data());
    check_launch("fma_peak_kernel");
    KVSIM_CUDA_CHECK(cudaEventRecord(e1));
    KVSIM_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    KVSIM_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (rep > 0 && ms < best_ms) best_ms = ms;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  const double fmas = double(blocks) * threads * kPeakChains * kPeakIters;
  return 2.0 * fmas / (best_ms * 1e-3) * 1e-9;
}

}  // namespace

bool built_with_cuda() { return true; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

std::string device_error() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return cudaGetErrorString(e);
  }
  return n > 0 ? "" : "no devices";
}

std::string device_name(int device) {
  require_device();
  if (device < 0) device = select_device();
  cudaDeviceProp p{};
  KVSIM_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return std::string("cuda:") + p.name;
}

double measured_peak_gflops(bool fp64) {
  require_device();
  return fp64 ? peak_of<double>() : peak_of<float>();
}

int select_device() {
  static int selected = -1;
  if (selected >= 0) return selected;
  require_device();
  const int n = device_count();
  int d = 0;
  if (const char* env = std::getenv("KVSIM_CUDA_DEVICE")) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end == env || *end != '\0' || v < 0 || v >= n)
      throw UsageError(std::string("KVSIM_CUDA_DEVICE = '") + env + "' is not a device index in [0, " +
                       std::to_string(n) + ")");
    d = static_cast<int>(v);
  } else {
    for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
      if (const char* env = std::getenv(var)) {
        d = static_cast<int>(std::strtol(env, nullptr, 10) % n);
        if (d < 0) d = 0;
        break;
      }
  }
  KVSIM_CUDA_CHECK(cudaSetDevice(d));
  selected = d;
  return d;
}

void require_device() {
  if (device_count() < 1) throw CudaError("no CUDA device found (" + device_error() + ")");
}

}  // namespace kvsim::cuda
