#include "sim/kernels/quant.h"

#include <algorithm>
#include <cmath>

#include "sim/base/error.h"
#include "sim/base/half.h"
#include "sim/kernels/quant_common.h"

namespace kvsim {

const float kNf4Values[16] = {-1.0f,
                              -0.6961928009986877f,
                              -0.5250730514526367f,
                              -0.39491748809814453f,
                              -0.28444138169288635f,
                              -0.18477343022823334f,
                              -0.09105003625154495f,
                              0.0f,
                              0.07958029955625534f,
                              0.16093020141124725f,
                              0.24611230194568634f,
                              0.33791524171829224f,
                              0.44070982933044434f,
                              0.5626170039176941f,
                              0.7229568362236023f,
                              1.0f};

int64_t uniform_bytes(int64_t n_elements, int bits, int64_t group) {
  const int64_t blocks = (n_elements + group - 1) / group;
  return (n_elements * bits + 7) / 8 + blocks * 4;  // fp16 scale + fp16 min per block
}

int64_t nf4_bytes(int64_t n_elements, int64_t block, bool double_quant) {
  const int64_t blocks = (n_elements + block - 1) / block;
  const int64_t payload = (n_elements + 1) / 2;
  if (!double_quant) return payload + blocks * 4;  // fp32 absmax per block
  const int64_t groups = (blocks + 255) / 256;
  return payload + blocks + groups * 4 + 4;  // int8 absmax per block, fp32 scale per 256, fp32 mean
}

namespace ref {

UniformQuantized quant_uniform(const float* x, int64_t n_t, int64_t D, int bits, QuantAxis axis, int64_t group) {
  quant::check_uniform_args(n_t, D, bits, axis, group);
  UniformQuantized q = quant::make_uniform(n_t, D, bits, axis, group);
  const int64_t n_blocks = n_t * D / group;
  for (int64_t b = 0; b < n_blocks; ++b) quant::encode_uniform_block(x, q, b);
  return q;
}

void dequant_uniform(const UniformQuantized& q, float* y) {
  const int64_t n_blocks = q.n_t * q.D / q.group;
  for (int64_t b = 0; b < n_blocks; ++b) quant::decode_uniform_block(q, b, y);
}

Nf4Quantized quant_nf4(const float* x, int64_t n_t, int64_t D, QuantAxis axis, int64_t block, bool double_quant) {
  quant::check_nf4_args(n_t, D, block);
  Nf4Quantized q = quant::make_nf4(n_t, D, axis, block, double_quant);
  const int64_t n_blocks = n_t * D / block;
  for (int64_t b = 0; b < n_blocks; ++b) q.absmax[static_cast<size_t>(b)] = quant::block_absmax_nf4(x, q, b);
  if (double_quant) quant::double_quantize(q);
  for (int64_t b = 0; b < n_blocks; ++b) quant::encode_nf4_block(x, q, b);
  return q;
}

void dequant_nf4(const Nf4Quantized& q, float* y) {
  const int64_t n_blocks = q.n_t * q.D / q.block;
  for (int64_t b = 0; b < n_blocks; ++b) quant::decode_nf4_block(q, b, y);
}

}  // namespace ref
}  // namespace kvsim
