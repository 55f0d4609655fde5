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

Fp8Quantized quant_fp8(const float* x, int64_t n_t, int64_t D, Fp8Format format, const float* scale) {
  Fp8Quantized q = quant::make_fp8(n_t, D, format, scale);
  const core::Fp8Spec f = core::fp8_spec(format == Fp8Format::e5m2);
  if (q.per_token) {
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n_t; ++t) core::fp8_token_scale_item(x, D, f, t, q.scale.data());  // kernel fp8_scale
  }
  const int64_t n = n_t * D;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < n; ++p)  // kernel fp8_codes
    core::fp8_codes_item(x, q.scale.data(), q.per_token, D, f, p, q.codes.data());
  return q;
}

void dequant_fp8(const Fp8Quantized& q, float* y) {
  const core::Fp8Spec f = core::fp8_spec(q.format == Fp8Format::e5m2);
  const int64_t n = q.n_t * q.D;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < n; ++p)  // kernel fp8_decode
    core::fp8_decode_item(q.codes.data(), q.scale.data(), q.per_token, q.D, f, p, y);
}

Int8Quantized quant_int8(const float* x, int64_t n_t, int64_t D, int64_t group) {
  Int8Quantized q = quant::make_int8(n_t, D, group);
  const int64_t n_groups = n_t * D / group, n = n_t * D;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n_groups; ++b) core::int8_scale_item(x, group, b, q.scale_f16.data());  // kernel int8_scale
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < n; ++p)
    core::int8_codes_item(x, q.scale_f16.data(), group, p, q.codes.data());  // kernel int8_codes
  return q;
}

void dequant_int8(const Int8Quantized& q, float* y) {
  const int64_t n = q.n_t * q.D;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < n; ++p)
    core::int8_decode_item(q.codes.data(), q.scale_f16.data(), q.group, p, y);  // kernel int8_decode
}

}  // namespace kvsim::omp
