#include "cuda/check.h"
#include "cuda/device.h"

namespace kvsim::cuda {

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
  cudaDeviceProp p{};
  KVSIM_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return std::string("cuda:") + p.name;
}

void require_device() {
  if (device_count() < 1) throw CudaError("no CUDA device found (" + device_error() + ")");
}

}  // namespace kvsim::cuda
