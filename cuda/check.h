// One checking macro for every CUDA runtime call: keeps the expression, file and line.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "sim/base/error.h"

#define KVSIM_CUDA_CHECK(expr)                                                               \
  do {                                                                                       \
    cudaError_t kvsim_err_ = (expr);                                                         \
    if (kvsim_err_ != cudaSuccess)                                                           \
      throw ::kvsim::CudaError(std::string("CUDA error ") + cudaGetErrorString(kvsim_err_) + \
                               " in `" #expr "` at " __FILE__ ":" KVSIM_STR(__LINE__));      \
  } while (0)
