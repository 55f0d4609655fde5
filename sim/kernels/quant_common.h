// Per-block encode/decode steps shared by sim/kernels/ref/quant.cpp and sim/kernels/omp/quant.cpp: both backends
// walk the same blocks with the same arithmetic, so their codes are identical; they differ in how
// blocks are scheduled. Blocks own whole bytes of the packed code array (group * bits % 8 == 0),
// so blocks can be encoded in parallel.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <string>

#include "sim/base/error.h"
#include "sim/base/half.h"
#include "sim/kernels/quant.h"

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

// Element j of uniform block b is x[block_base(q, b) + j * block_stride(q)].
inline int64_t block_base(const UniformQuantized& q, int64_t b) {
  if (q.axis == QuantAxis::token) {
    const int64_t per_row = q.D / q.group;
    return (b / per_row) * q.D + (b % per_row) * q.group;
  }
  return (b / q.D) * q.group * q.D + (b % q.D);
}
inline int64_t block_stride(const UniformQuantized& q) { return q.axis == QuantAxis::token ? 1 : q.D; }

// Packs `n` codes of `bits` each into whole bytes at out (little-endian within a byte).
inline void pack_codes(const uint8_t* codes, int64_t n, int bits, uint8_t* out) {
  const int per_byte = 8 / bits;
  for (int64_t i = 0; i < n / per_byte; ++i) {
    uint8_t byte = 0;
    for (int j = 0; j < per_byte; ++j) byte |= static_cast<uint8_t>(codes[i * per_byte + j] << (j * bits));
    out[i] = byte;
  }
}

inline uint32_t get_code(const std::vector<uint8_t>& codes, int64_t i, int bits) {
  const int64_t bit = i * bits;
  return (codes[static_cast<size_t>(bit / 8)] >> (bit % 8)) & ((1u << bits) - 1u);
}

inline void encode_uniform_block(const float* x, UniformQuantized& q, int64_t b) {
  const float* xb = x + block_base(q, b);
  const int64_t st = block_stride(q), n = q.group;
  float mn = INFINITY, mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    mn = std::min(mn, xb[j * st]);
    mx = std::max(mx, xb[j * st]);
  }
  const float levels = static_cast<float>((1 << q.bits) - 1);
  const uint16_t smin = f32_to_f16(mn), sscale = f32_to_f16((mx - mn) / levels);
  q.min_f16[static_cast<size_t>(b)] = smin;
  q.scale_f16[static_cast<size_t>(b)] = sscale;
  const float fmin = f16_to_f32(smin), fscale = f16_to_f32(sscale);
  uint8_t codes[4096];
  for (int64_t j0 = 0; j0 < n; j0 += 4096) {  // chunks of 4096 codes (a multiple of every per_byte)
    const int64_t m = std::min<int64_t>(4096, n - j0);
    for (int64_t j = 0; j < m; ++j) {
      float c = fscale > 0 ? std::floor((xb[(j0 + j) * st] - fmin) / fscale + 0.5f) : 0.0f;
      codes[j] = static_cast<uint8_t>(std::clamp(c, 0.0f, levels));
    }
    pack_codes(codes, m, q.bits, q.codes.data() + (b * n + j0) * q.bits / 8);
  }
}

inline void decode_uniform_block(const UniformQuantized& q, int64_t b, float* y) {
  const float fmin = f16_to_f32(q.min_f16[static_cast<size_t>(b)]);
  const float fscale = f16_to_f32(q.scale_f16[static_cast<size_t>(b)]);
  float* yb = y + block_base(q, b);
  const int64_t st = block_stride(q), per_byte = 8 / q.bits;
  const uint8_t* in = q.codes.data() + b * q.group * q.bits / 8;
  const uint32_t mask = (1u << q.bits) - 1u;
  for (int64_t j = 0; j < q.group; ++j) {
    const uint32_t code = (in[j / per_byte] >> ((j % per_byte) * q.bits)) & mask;
    yb[j * st] = static_cast<float>(code) * fscale + fmin;
  }
}

inline int64_t nf4_index(const Nf4Quantized& q, int64_t e) {
  if (q.axis == QuantAxis::token) return e;
  return (e % q.n_t) * q.D + e / q.n_t;  // column-major order
}

inline float block_absmax_nf4(const float* x, const Nf4Quantized& q, int64_t b) {
  float m = 0;
  if (q.axis == QuantAxis::token) {
    const float* xb = x + b * q.block;
    for (int64_t j = 0; j < q.block; ++j) m = std::max(m, std::fabs(xb[j]));
    return m;
  }
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

// Midpoints between consecutive NormalFloat-4 values: the nearest value's index is the number of
// midpoints strictly below v (a value exactly halfway goes to the lower index).
inline const float* nf4_midpoints() {
  static const std::array<float, 15> mids = [] {
    std::array<float, 15> m{};
    for (int i = 0; i < 15; ++i) m[static_cast<size_t>(i)] = 0.5f * (kNf4Values[i] + kNf4Values[i + 1]);
    return m;
  }();
  return mids.data();
}

inline uint32_t nf4_nearest(float v, const float* mids) {
  uint32_t idx = 0;
  for (int i = 0; i < 15; ++i) idx += v > mids[i] ? 1u : 0u;
  return idx;
}

inline void encode_nf4_block(const float* x, Nf4Quantized& q, int64_t b) {
  const float scale = nf4_block_scale(q, b);
  const float inv = scale > 0 ? 1.0f / scale : 0.0f;
  const float* mids = nf4_midpoints();
  uint8_t* out = q.codes.data() + b * q.block / 2;
  for (int64_t j = 0; j < q.block; j += 2) {
    const int64_t e = b * q.block + j;
    const float v0 = q.axis == QuantAxis::token ? x[e] : x[nf4_index(q, e)];
    const float v1 = q.axis == QuantAxis::token ? x[e + 1] : x[nf4_index(q, e + 1)];
    const uint32_t c0 = scale > 0 ? nf4_nearest(v0 * inv, mids) : 7u;  // 7 is the code of 0.0
    const uint32_t c1 = scale > 0 ? nf4_nearest(v1 * inv, mids) : 7u;
    out[j / 2] = static_cast<uint8_t>(c0 | (c1 << 4));
  }
}

inline void decode_nf4_block(const Nf4Quantized& q, int64_t b, float* y) {
  const float scale = nf4_block_scale(q, b);
  const uint8_t* in = q.codes.data() + b * q.block / 2;
  for (int64_t j = 0; j < q.block; ++j) {
    const int64_t e = b * q.block + j;
    const float v = kNf4Values[(in[j / 2] >> ((j % 2) * 4)) & 0xfu] * scale;
    if (q.axis == QuantAxis::token)
      y[e] = v;
    else
      y[nf4_index(q, e)] = v;
  }
}

}  // namespace kvsim::quant
