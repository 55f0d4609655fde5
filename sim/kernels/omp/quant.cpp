#include "sim/kernels/quant.h"

#include "sim/kernels/quant_common.h"

namespace kvsim::omp {

UniformQuantized quant_uniform(const float* x, int64_t n_t, int64_t D, int bits, QuantAxis axis, int64_t group) {
  quant::check_uniform_args(n_t, D, bits, axis, group);
  UniformQuantized q = quant::make_uniform(n_t, D, bits, axis, group);
  const int64_t n_blocks = n_t * D / group;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n_blocks; ++b) quant::encode_uniform_block(x, q, b);
  return q;
}

void dequant_uniform(const UniformQuantized& q, float* y) {
  const int64_t n_blocks = q.n_t * q.D / q.group;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n_blocks; ++b) quant::decode_uniform_block(q, b, y);
}

Nf4Quantized quant_nf4(const float* x, int64_t n_t, int64_t D, QuantAxis axis, int64_t block, bool double_quant) {
  quant::check_nf4_args(n_t, D, block);
  Nf4Quantized q = quant::make_nf4(n_t, D, axis, block, double_quant);
  const int64_t n_blocks = n_t * D / block;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n_blocks; ++b) q.absmax[static_cast<size_t>(b)] = quant::block_absmax_nf4(x, q, b);
  if (double_quant) quant::double_quantize(q);  // sequential: a mean over all blocks, cheap
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n_blocks; ++b) quant::encode_nf4_block(x, q, b);
  return q;
}

void dequant_nf4(const Nf4Quantized& q, float* y) {
  const int64_t n_blocks = q.n_t * q.D / q.block;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n_blocks; ++b) quant::decode_nf4_block(q, b, y);
}

}  // namespace kvsim::omp
