#include "sim/kernels/quant.h"

#include "sim/kernels/quant_common.h"
#include "sim/kernels/quant_core.h"

namespace kvsim::omp {

// ref's sequence of kernels (sim/kernels/ref/quant.cpp) with each kernel's work items
// (sim/kernels/quant_core.h) spread over threads: items write disjoint values, so the results are
// ref's bit for bit.

UniformQuantized quant_uniform(const float* x, int64_t n_t, int64_t D, int bits, QuantAxis axis, int64_t group) {
  quant::check_uniform_args(n_t, D, bits, axis, group);
  UniformQuantized q = quant::make_uniform(n_t, D, bits, axis, group);
  const core::UniformShape s = quant::uniform_shape(n_t, D, bits, axis, group);
  const int64_t n_blocks = core::uniform_blocks(s), n_bytes = core::uniform_code_bytes(s);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n_blocks; ++b) core::uniform_params_item(x, s, b, q.min_f16.data(), q.scale_f16.data());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n_bytes; ++i)
    core::uniform_codes_item(x, s, q.min_f16.data(), q.scale_f16.data(), i, q.codes.data());
  return q;
}

void dequant_uniform(const UniformQuantized& q, float* y) {
  const core::UniformShape s = quant::uniform_shape(q.n_t, q.D, q.bits, q.axis, q.group);
  const int64_t n = q.n_t * q.D;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < n; ++p)
    core::uniform_decode_item(q.codes.data(), q.min_f16.data(), q.scale_f16.data(), s, p, y);
}

Nf4Quantized quant_nf4(const float* x, int64_t n_t, int64_t D, QuantAxis axis, int64_t block, bool double_quant) {
  quant::check_nf4_args(n_t, D, block);
  Nf4Quantized q = quant::make_nf4(n_t, D, axis, block, double_quant);
  const core::Nf4Shape s = quant::nf4_shape(n_t, D, axis, block);
  const int64_t n_blocks = core::nf4_blocks(s), n_bytes = n_t * D / 2;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n_blocks; ++b) core::nf4_absmax_item(x, s, b, q.absmax.data());
  if (double_quant) {  // sequential: a mean over all blocks and one item per 256 blocks, cheap
    q.absmax_q.assign(static_cast<size_t>(n_blocks), 0);
    q.dq_scale.assign(static_cast<size_t>(core::nf4_dq_groups(s)), 0.0f);
    q.dq_mean = core::nf4_dq_mean(q.absmax.data(), n_blocks);
    for (int64_t g = 0; g < core::nf4_dq_groups(s); ++g)
      core::nf4_dq_group_item(q.absmax.data(), n_blocks, q.dq_mean, g, q.dq_scale.data(), q.absmax_q.data());
  }
  core::Nf4Table tab;
  core::nf4_table_init(&tab);
  const int8_t* aq = double_quant ? q.absmax_q.data() : nullptr;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n_bytes; ++i)
    core::nf4_codes_item(x, s, q.absmax.data(), aq, q.dq_scale.data(), &q.dq_mean, tab, i, q.codes.data());
  return q;
}

void dequant_nf4(const Nf4Quantized& q, float* y) {
  const core::Nf4Shape s = quant::nf4_shape(q.n_t, q.D, q.axis, q.block);
  core::Nf4Table tab;
  core::nf4_table_init(&tab);
  const int8_t* aq = q.double_quant ? q.absmax_q.data() : nullptr;
  const int64_t n = q.n_t * q.D;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < n; ++p)
    core::nf4_decode_item(q.codes.data(), s, q.absmax.data(), aq, q.dq_scale.data(), q.dq_mean, tab, p, y);
}

}  // namespace kvsim::omp
