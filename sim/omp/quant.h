// OpenMP twins of sim/ref/quant.h: same names, same results bit for bit (blocks in parallel).
#pragma once

#include "sim/ref/quant.h"

namespace kvsim::omp {

UniformQuantized quant_uniform(const float* x, int64_t n_t, int64_t D, int bits, QuantAxis axis, int64_t group);
void dequant_uniform(const UniformQuantized& q, float* y);
Nf4Quantized quant_nf4(const float* x, int64_t n_t, int64_t D, QuantAxis axis, int64_t block, bool double_quant);
void dequant_nf4(const Nf4Quantized& q, float* y);

}  // namespace kvsim::omp
