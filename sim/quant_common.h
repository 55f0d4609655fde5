// Per-block encode/decode steps shared by sim/ref/quant.cpp and sim/omp/quant.cpp: both backends
// walk the same blocks with the same arithmetic, so their codes are identical; they differ in how
// blocks are scheduled. Blocks own whole bytes of the packed code array (group * bits % 8 == 0),
// so blocks can be encoded in parallel.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>

#include "sim/error.h"
#include "sim/half.h"
#include "sim/ref/quant.h"

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

// Index into the [n_t, D] tile of element j of uniform block b.
inline int64_t uniform_index(const UniformQuantized& q, int64_t b, int64_t j) {
  if (q.axis == QuantAxis::token) {
    const int64_t per_row = q.D / q.group;
    return (b / per_row) * q.D + (b % per_row) * q.group + j;
  }
  return ((b / q.D) * q.group + j) * q.D + (b % q.D);
}

inline void put_code(std::vector<uint8_t>& codes, int64_t i, int bits, uint32_t code) {
  const int64_t bit = i * bits;
  codes[static_cast<size_t>(bit / 8)] |= static_cast<uint8_t>(code << (bit % 8));
}

inline uint32_t get_code(const std::vector<uint8_t>& codes, int64_t i, int bits) {
  const int64_t bit = i * bits;
  return (codes[static_cast<size_t>(bit / 8)] >> (bit % 8)) & ((1u << bits) - 1u);
}

inline void encode_uniform_block(const float* x, UniformQuantized& q, int64_t b) {
  float mn = INFINITY, mx = -INFINITY;
  for (int64_t j = 0; j < q.group; ++j) {
    const float v = x[uniform_index(q, b, j)];
    mn = std::min(mn, v);
    mx = std::max(mx, v);
  }
  const float levels = static_cast<float>((1 << q.bits) - 1);
  const uint16_t smin = f32_to_f16(mn), sscale = f32_to_f16((mx - mn) / levels);
  q.min_f16[static_cast<size_t>(b)] = smin;
  q.scale_f16[static_cast<size_t>(b)] = sscale;
  const float fmin = f16_to_f32(smin), fscale = f16_to_f32(sscale);
  for (int64_t j = 0; j < q.group; ++j) {
    uint32_t code = 0;
    if (fscale > 0) {
      const float c = std::floor((x[uniform_index(q, b, j)] - fmin) / fscale + 0.5f);
      code = static_cast<uint32_t>(std::clamp(c, 0.0f, levels));
    }
    put_code(q.codes, b * q.group + j, q.bits, code);
  }
}

inline void decode_uniform_block(const UniformQuantized& q, int64_t b, float* y) {
  const float fmin = f16_to_f32(q.min_f16[static_cast<size_t>(b)]);
  const float fscale = f16_to_f32(q.scale_f16[static_cast<size_t>(b)]);
  for (int64_t j = 0; j < q.group; ++j)
    y[uniform_index(q, b, j)] = static_cast<float>(get_code(q.codes, b * q.group + j, q.bits)) * fscale + fmin;
}

inline int64_t nf4_index(const Nf4Quantized& q, int64_t e) {
  if (q.axis == QuantAxis::token) return e;
  return (e % q.n_t) * q.D + e / q.n_t;  // column-major order
}

inline float block_absmax_nf4(const float* x, const Nf4Quantized& q, int64_t b) {
  float m = 0;
  for (int64_t j = 0; j < q.block; ++j) m = std::max(m, std::fabs(x[nf4_index(q, b * q.block + j)]));
  return m;
}

// The absmax a block decodes with: exact, or its double-quantized reconstruction.
inline float nf4_block_scale(const Nf4Quantized& q, int64_t b) {
  if (!q.double_quant) return q.absmax[static_cast<size_t>(b)];
  return static_cast<float>(q.absmax_q[static_cast<size_t>(b)]) * q.dq_scale[static_cast<size_t>(b / 256)] + q.dq_mean;
}

// Mean-centred 8-bit symmetric quantization of the absmax values in groups of 256 blocks.
inline void double_quantize(Nf4Quantized& q) {
  const size_t n = q.absmax.size();
  double mean = 0;
  for (float a : q.absmax) mean += a;
  q.dq_mean = n ? static_cast<float>(mean / static_cast<double>(n)) : 0.0f;
  q.absmax_q.assign(n, 0);
  q.dq_scale.assign((n + 255) / 256, 0.0f);
  for (size_t g = 0; g < q.dq_scale.size(); ++g) {
    float m = 0;
    for (size_t i = g * 256; i < std::min(n, g * 256 + 256); ++i) m = std::max(m, std::fabs(q.absmax[i] - q.dq_mean));
    const float s = m / 127.0f;
    q.dq_scale[g] = s;
    for (size_t i = g * 256; i < std::min(n, g * 256 + 256); ++i)
      q.absmax_q[i] = s > 0 ? static_cast<int8_t>(std::clamp(std::floor((q.absmax[i] - q.dq_mean) / s + 0.5f), -127.0f, 127.0f)) : 0;
  }
}

inline uint32_t nf4_nearest(float v) {
  uint32_t best = 0;
  float bd = std::fabs(v - kNf4Values[0]);
  for (uint32_t c = 1; c < 16; ++c) {
    const float d = std::fabs(v - kNf4Values[c]);
    if (d < bd) {
      bd = d;
      best = c;
    }
  }
  return best;
}

inline void encode_nf4_block(const float* x, Nf4Quantized& q, int64_t b) {
  const float scale = nf4_block_scale(q, b);
  for (int64_t j = 0; j < q.block; ++j) {
    const int64_t e = b * q.block + j;
    const uint32_t code = scale > 0 ? nf4_nearest(x[nf4_index(q, e)] / scale) : 7u;  // 7 is the code of 0.0
    put_code(q.codes, e, 4, code);
  }
}

inline void decode_nf4_block(const Nf4Quantized& q, int64_t b, float* y) {
  const float scale = nf4_block_scale(q, b);
  for (int64_t j = 0; j < q.block; ++j) {
    const int64_t e = b * q.block + j;
    y[nf4_index(q, e)] = kNf4Values[get_code(q.codes, e, 4)] * scale;
  }
}

}  // namespace kvsim::quant
