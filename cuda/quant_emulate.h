// Host emulation of the CUDA quantization kernels (cuda/quant.cu): the same work items
// (cuda/quant_core.h), launched in the same order, each kernel's items run one after another on
// the CPU. Same names and results as kvsim::ref / kvsim::cuda; used by tests/test_cuda_quant.cpp
// ("cuda-host: ..." cases), so the GPU's arithmetic is checked against sim/ref on any machine.
// Plain C++: compiles without CUDA.
#pragma once

#include <cstdint>
#include <vector>

#include "cuda/quant_core.h"
#include "sim/kernels/quant_common.h"
#include "sim/kernels/quant.h"

namespace kvsim::cuda::emulate {

inline core::UniformShape uniform_shape(int64_t n_t, int64_t D, int bits, QuantAxis axis, int64_t group) {
  core::UniformShape s;
  s.n_t = n_t, s.D = D, s.group = group, s.bits = bits, s.channel = axis == QuantAxis::channel;
  return s;
}

inline core::Nf4Shape nf4_shape(int64_t n_t, int64_t D, QuantAxis axis, int64_t block) {
  core::Nf4Shape s;
  s.n_t = n_t, s.D = D, s.block = block, s.channel = axis == QuantAxis::channel;
  return s;
}

// x: [n_t, D]; the argument rules of ref::quant_uniform.
inline UniformQuantized quant_uniform(const float* x, int64_t n_t, int64_t D, int bits, QuantAxis axis, int64_t group) {
  quant::check_uniform_args(n_t, D, bits, axis, group);
  UniformQuantized q = quant::make_uniform(n_t, D, bits, axis, group);
  const core::UniformShape s = uniform_shape(n_t, D, bits, axis, group);
  for (int64_t b = 0; b < core::uniform_blocks(s); ++b)  // kernel uniform_params
    core::uniform_params_item(x, s, b, q.min_f16.data(), q.scale_f16.data());
  for (int64_t i = 0; i < core::uniform_code_bytes(s); ++i)  // kernel uniform_codes
    core::uniform_codes_item(x, s, q.min_f16.data(), q.scale_f16.data(), i, q.codes.data());
  return q;
}

inline void dequant_uniform(const UniformQuantized& q, float* y) {  // y: [n_t, D]
  const core::UniformShape s = uniform_shape(q.n_t, q.D, q.bits, q.axis, q.group);
  for (int64_t p = 0; p < q.n_t * q.D; ++p)  // kernel uniform_decode
    core::uniform_decode_item(q.codes.data(), q.min_f16.data(), q.scale_f16.data(), s, p, y);
}

// x: [n_t, D]; the argument rules of ref::quant_nf4.
inline Nf4Quantized quant_nf4(const float* x, int64_t n_t, int64_t D, QuantAxis axis, int64_t block, bool double_quant) {
  quant::check_nf4_args(n_t, D, block);
  Nf4Quantized q = quant::make_nf4(n_t, D, axis, block, double_quant);
  const core::Nf4Shape s = nf4_shape(n_t, D, axis, block);
  const int64_t n_blocks = core::nf4_blocks(s);
  for (int64_t b = 0; b < n_blocks; ++b) core::nf4_absmax_item(x, s, b, q.absmax.data());  // kernel nf4_absmax
  if (double_quant) {
    q.absmax_q.assign(static_cast<size_t>(n_blocks), 0);
    q.dq_scale.assign(static_cast<size_t>(core::nf4_dq_groups(s)), 0.0f);
    q.dq_mean = core::nf4_dq_mean(q.absmax.data(), n_blocks);  // kernel nf4_dq_mean
    for (int64_t g = 0; g < core::nf4_dq_groups(s); ++g)        // kernel nf4_dq_group
      core::nf4_dq_group_item(q.absmax.data(), n_blocks, q.dq_mean, g, q.dq_scale.data(), q.absmax_q.data());
  }
  core::Nf4Table tab;
  core::nf4_table_init(&tab);
  const int8_t* aq = double_quant ? q.absmax_q.data() : nullptr;
  for (int64_t i = 0; i < n_t * D / 2; ++i)  // kernel nf4_codes
    core::nf4_codes_item(x, s, q.absmax.data(), aq, q.dq_scale.data(), &q.dq_mean, tab, i, q.codes.data());
  return q;
}

inline void dequant_nf4(const Nf4Quantized& q, float* y) {  // y: [n_t, D]
  const core::Nf4Shape s = nf4_shape(q.n_t, q.D, q.axis, q.block);
  core::Nf4Table tab;
  core::nf4_table_init(&tab);
  const int8_t* aq = q.double_quant ? q.absmax_q.data() : nullptr;
  for (int64_t p = 0; p < q.n_t * q.D; ++p)  // kernel nf4_decode
    core::nf4_decode_item(q.codes.data(), s, q.absmax.data(), aq, q.dq_scale.data(), q.dq_mean, tab, p, y);
}

}  // namespace kvsim::cuda::emulate
