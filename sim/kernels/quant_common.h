// Host-side helpers of the quantization kernels (ref, omp, the cuda wrappers): argument checks,
// the containers, and the shapes the work items of sim/kernels/quant_core.h take. The arithmetic
// itself is the core's. Blocks own whole bytes of the packed code array (group * bits % 8 == 0),
// so code bytes can be written in parallel.
#pragma once

#include <string>

#include "sim/base/error.h"
#include "sim/kernels/quant.h"
#include "sim/kernels/quant_core.h"

namespace kvsim::quant {

inline void check_uniform_args(int64_t n_t, int64_t D, int bits, QuantAxis axis, int64_t group) {
  if (bits != 2 && bits != 4 && bits != 8)
    throw UsageError("quantization bits = " + std::to_string(bits) + " (choose 2, 4 or 8)");
  if (group < 1) throw UsageError("quantization group = " + std::to_string(group) + " must be >= 1");
  if ((group * bits) % 8 != 0)
    throw UsageError("quantization group = " + std::to_string(group) + " with bits = " + std::to_string(bits) +
                     ": group * bits must be a multiple of 8");
  if (axis == QuantAxis::token && D % group != 0)
    throw UsageError("quantization group = " + std::to_string(group) + " does not divide D = " + std::to_string(D) +
                     " (axis = token)");
  if (axis == QuantAxis::channel && n_t % group != 0)
    throw UsageError("quantization group = " + std::to_string(group) + " does not divide the " + std::to_string(n_t) +
                     " tokens of the tile (axis = channel)");
}

inline void check_nf4_args(int64_t n_t, int64_t D, int64_t block) {
  if (block < 2 || block % 2 != 0) throw UsageError("nf4 block = " + std::to_string(block) + " must be even and >= 2");
  if ((n_t * D) % block != 0)
    throw UsageError("nf4 block = " + std::to_string(block) + " does not divide the tile's " + std::to_string(n_t) +
                     " x " + std::to_string(D) + " elements");
}

// Empty quantized containers sized for a [n_t, D] tile (arguments already checked).
inline UniformQuantized make_uniform(int64_t n_t, int64_t D, int bits, QuantAxis axis, int64_t group) {
  UniformQuantized q;
  q.bits = bits;
  q.axis = axis;
  q.group = group;
  q.n_t = n_t;
  q.D = D;
  const int64_t n_blocks = n_t * D / group;
  q.codes.assign(static_cast<size_t>((n_t * D * bits + 7) / 8), 0);
  q.scale_f16.resize(static_cast<size_t>(n_blocks));
  q.min_f16.resize(static_cast<size_t>(n_blocks));
  return q;
}

inline Nf4Quantized make_nf4(int64_t n_t, int64_t D, QuantAxis axis, int64_t block, bool double_quant) {
  Nf4Quantized q;
  q.axis = axis;
  q.block = block;
  q.n_t = n_t;
  q.D = D;
  q.double_quant = double_quant;
  q.codes.assign(static_cast<size_t>((n_t * D + 1) / 2), 0);
  q.absmax.resize(static_cast<size_t>(n_t * D / block));
  return q;
}

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

// fp8 / int8: the containers for a [n_t, D] tile, arguments checked.
inline Fp8Quantized make_fp8(int64_t n_t, int64_t D, Fp8Format format, const float* scale) {
  if (scale && !(*scale > 0)) throw UsageError("fp8 scale = " + std::to_string(*scale) + " must be > 0");
  Fp8Quantized q;
  q.format = format, q.per_token = scale == nullptr, q.n_t = n_t, q.D = D;
  q.codes.assign(static_cast<size_t>(n_t * D), 0);
  q.scale.assign(scale ? 1 : static_cast<size_t>(n_t), scale ? *scale : 0.0f);
  return q;
}

inline Int8Quantized make_int8(int64_t n_t, int64_t D, int64_t group) {
  if (group < 1 || D % group != 0)
    throw UsageError("int8 group = " + std::to_string(group) + " must be >= 1 and divide D = " + std::to_string(D));
  Int8Quantized q;
  q.group = group, q.n_t = n_t, q.D = D;
  q.codes.assign(static_cast<size_t>(n_t * D), 0);
  q.scale_f16.assign(static_cast<size_t>(n_t * D / group), 0);
  return q;
}

}  // namespace kvsim::quant
