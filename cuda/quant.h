// CUDA twins of the kernels of sim/kernels/quant.h: same names, same results bit for bit. The kernels
// (cuda/quant.cu) run the work items of sim/kernels/quant_core.h, which ref runs serially in the
// same order; tests/test_cuda_quant.cpp checks the GPU against ref where there is one, and
// tests/test_quant.cpp checks ref against a direct implementation everywhere.
// Built from quant.cu with CUDA, from quant_stub.cpp without it (every call throws NotCompiled).
// Plain C++ header: no CUDA include. A stream is passed as `void*` (a cudaStream_t; nullptr is the
// default stream).
#pragma once

#include <cstdint>

#include "sim/kernels/quant.h"

namespace kvsim::cuda {

// The host-pointer forms (upload, kernels, download, synchronize) are declared with ref's in
// sim/kernels/quant.h.

// Device pointers, asynchronous on `stream` (for benchmarks and device-resident pipelines).
// Sizes as in UniformQuantized / Nf4Quantized; arguments are checked as in kvsim::ref.
struct UniformDevice {
  uint8_t* codes = nullptr;       // [n_t * D * bits / 8]
  uint16_t* scale_f16 = nullptr;  // [n_blocks]
  uint16_t* min_f16 = nullptr;    // [n_blocks]
};
struct Nf4Device {
  uint8_t* codes = nullptr;    // [n_t * D / 2]
  float* absmax = nullptr;     // [n_blocks] (exact absmax, also with double quantization)
  int8_t* absmax_q = nullptr;  // [n_blocks], double quantization only
  float* dq_scale = nullptr;   // [ceil(n_blocks / 256)], double quantization only
  float* dq_mean = nullptr;    // [1], double quantization only
};

void quant_uniform_device(const float* x,  // [n_t, D]
                          int64_t n_t, int64_t D, int bits, QuantAxis axis, int64_t group, UniformDevice out,
                          void* stream);
void dequant_uniform_device(const UniformDevice& q, int64_t n_t, int64_t D, int bits, QuantAxis axis, int64_t group,
                            float* y,  // [n_t, D]
                            void* stream);
void quant_nf4_device(const float* x,  // [n_t, D]
                      int64_t n_t, int64_t D, QuantAxis axis, int64_t block, bool double_quant, Nf4Device out,
                      void* stream);
// double_quant reads absmax_q, dq_scale and dq_mean (device) instead of absmax.
void dequant_nf4_device(const Nf4Device& q, int64_t n_t, int64_t D, QuantAxis axis, int64_t block, bool double_quant,
                        float* y,  // [n_t, D]
                        void* stream);

}  // namespace kvsim::cuda
