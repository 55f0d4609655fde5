// A direct implementation of the quantization formats, written from their definitions
// (design.md §5, the comments of sim/kernels/quant.h) independently of the kernels: element by
// element, fp16 rounding by the compiler's _Float16 (not sim/base/half.h), NF4 codes by a search
// for the nearest of the 16 values as printed in the QLoRA paper (not a count of midpoints), and
// the packed layout rebuilt from its description. tests/test_quant.cpp compares kvsim::ref with it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "sim/kernels/quant.h"

namespace kvsim::test::direct {

// The NormalFloat-4 values as printed in QLoRA (arXiv 2305.14314, Appendix E), ascending.
inline constexpr double kNf4Paper[16] = {-1.0,
                                         -0.6961928009986877,
                                         -0.5250730514526367,
                                         -0.39491748809814453,
                                         -0.28444138169288635,
                                         -0.18477343022823334,
                                         -0.09105003625154495,
                                         0.0,
                                         0.07958029955625534,
                                         0.16093020141124725,
                                         0.24611230194568634,
                                         0.33791524171829224,
                                         0.44070982933044434,
                                         0.5626170039176941,
                                         0.7229568362236023,
                                         1.0};

inline uint16_t to_f16(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  uint16_t u;
  std::memcpy(&u, &h, 2);
  return u;
}
inline float from_f16(uint16_t u) {
  _Float16 h;
  std::memcpy(&h, &u, 2);
  return static_cast<float>(h);
}

// ---- uniform asymmetric b-bit ------------------------------------------------------------------

// The block of element (t, d) of a [n_t, D] tile and its place j in the block: axis = token, a
// block is `group` channels of one token; axis = channel, `group` tokens of one channel. Blocks
// are numbered row by row of the grid of blocks.
struct Place {
  int64_t block, j;
};
inline Place uniform_place(int64_t t, int64_t d, int64_t D, QuantAxis axis, int64_t group) {
  if (axis == QuantAxis::token) return {t * (D / group) + d / group, d % group};
  return {(t / group) * D + d, t % group};
}

struct Uniform {
  std::vector<uint16_t> min_f16, scale_f16;  // [n_blocks]
  std::vector<uint32_t> code;                // [n_t, D]
  std::vector<uint8_t> packed;               // code of (block, j) at bit (block * group + j) * bits, little-endian
  std::vector<float> decoded;                // [n_t, D]
};

// x: [n_t, D] finite.
inline Uniform uniform(const float* x, int64_t n_t, int64_t D, int bits, QuantAxis axis, int64_t group) {
  const int64_t n_blocks = n_t * D / group;
  const float levels = static_cast<float>((1 << bits) - 1);
  // Each block's members in their order j (std::min/max keep the first of equal extremes, which
  // decides the sign of a zero min).
  std::vector<std::vector<float>> members(n_blocks, std::vector<float>(group));
  for (int64_t t = 0; t < n_t; ++t)
    for (int64_t d = 0; d < D; ++d) {
      const Place p = uniform_place(t, d, D, axis, group);
      members[p.block][p.j] = x[t * D + d];
    }
  Uniform r;
  r.min_f16.resize(n_blocks), r.scale_f16.resize(n_blocks);
  for (int64_t b = 0; b < n_blocks; ++b) {
    float mn = INFINITY, mx = -INFINITY;
    for (float v : members[b]) mn = std::min(mn, v), mx = std::max(mx, v);
    // min and scale are rounded to fp16 first: codes are computed from what the decoder reads.
    r.min_f16[b] = to_f16(mn);
    r.scale_f16[b] = to_f16((mx - mn) / levels);
  }
  r.code.resize(n_t * D), r.decoded.resize(n_t * D);
  r.packed.assign((n_t * D * bits + 7) / 8, 0);
  for (int64_t t = 0; t < n_t; ++t)
    for (int64_t d = 0; d < D; ++d) {
      const Place p = uniform_place(t, d, D, axis, group);
      const float lo = from_f16(r.min_f16[p.block]), s = from_f16(r.scale_f16[p.block]);
      uint32_t c = 0;  // a block whose fp16 scale is 0 decodes to min
      if (s > 0) c = static_cast<uint32_t>(std::clamp(std::floor((x[t * D + d] - lo) / s + 0.5f), 0.0f, levels));
      r.code[t * D + d] = c;
      r.decoded[t * D + d] = static_cast<float>(c) * s + lo;
      const int64_t bit = (p.block * group + p.j) * bits;
      r.packed[bit / 8] |= static_cast<uint8_t>(c << (bit % 8));
    }
  return r;
}

// ---- NF4 ---------------------------------------------------------------------------------------

// Element e of the block order (row-major for axis = token, column-major for axis = channel) lies
// at x[nf4_at(e)]; block b is elements b * block .. b * block + block - 1.
inline int64_t nf4_at(int64_t e, int64_t n_t, int64_t D, QuantAxis axis) {
  return axis == QuantAxis::token ? e : (e % n_t) * D + e / n_t;
}

// The code of v = x / absmax: the index of the nearest value (the paper's digits rounded to float,
// as stored), the lower index on an exact tie.
inline uint32_t nf4_nearest(double v) {
  uint32_t best = 0;
  for (uint32_t i = 1; i < 16; ++i)
    if (std::fabs(v - static_cast<float>(kNf4Paper[i])) < std::fabs(v - static_cast<float>(kNf4Paper[best]))) best = i;
  return best;
}

// How far v lies from the nearest midpoint between two neighbouring values, relative to it, and
// which lower index that midpoint has.
inline double nf4_midpoint_distance(double v, uint32_t* lower) {
  double best = INFINITY;
  for (uint32_t i = 0; i < 15; ++i) {
    const double m =
        0.5 * (static_cast<double>(static_cast<float>(kNf4Paper[i])) + static_cast<float>(kNf4Paper[i + 1]));
    const double rel = std::fabs(v - m) / std::fabs(m);
    if (rel < best) best = rel, *lower = i;
  }
  return best;
}

struct Nf4 {
  std::vector<float> absmax;     // [n_blocks]
  std::vector<int8_t> absmax_q;  // [n_blocks] with double quantization
  std::vector<float> dq_scale;   // [ceil(n_blocks / 256)]
  float dq_mean = 0;
  std::vector<float> scale;    // [n_blocks] what each block decodes with
  std::vector<double> v;       // [n_t * D] in block order: x / scale (0 where scale <= 0)
  std::vector<uint32_t> code;  // [n_t * D] in block order
  std::vector<float> decoded;  // [n_t, D]
};

inline Nf4 nf4(const float* x, int64_t n_t, int64_t D, QuantAxis axis, int64_t block, bool double_quant) {
  const int64_t n = n_t * D, n_blocks = n / block;
  Nf4 r;
  r.absmax.assign(n_blocks, 0.0f);
  for (int64_t e = 0; e < n; ++e)
    r.absmax[e / block] = std::max(r.absmax[e / block], std::fabs(x[nf4_at(e, n_t, D, axis)]));
  r.scale = r.absmax;
  if (double_quant) {
    // absmax - mean as symmetric 8-bit codes, one fp32 scale per 256 blocks, one fp32 mean.
    double sum = 0;
    for (float a : r.absmax) sum += a;
    r.dq_mean = n_blocks ? static_cast<float>(sum / static_cast<double>(n_blocks)) : 0.0f;
    const int64_t n_groups = (n_blocks + 255) / 256;
    r.dq_scale.assign(n_groups, 0.0f);
    r.absmax_q.assign(n_blocks, 0);
    for (int64_t b = 0; b < n_blocks; ++b)
      r.dq_scale[b / 256] = std::max(r.dq_scale[b / 256], std::fabs(r.absmax[b] - r.dq_mean));
    for (float& s : r.dq_scale) s /= 127.0f;
    for (int64_t b = 0; b < n_blocks; ++b) {
      const float s = r.dq_scale[b / 256];
      if (s > 0)
        r.absmax_q[b] =
            static_cast<int8_t>(std::clamp(std::floor((r.absmax[b] - r.dq_mean) / s + 0.5f), -127.0f, 127.0f));
      r.scale[b] = static_cast<float>(r.absmax_q[b]) * s + r.dq_mean;
    }
  }
  r.v.assign(n, 0.0), r.code.assign(n, 7), r.decoded.resize(n);  // 7: the value 0, for a block with scale <= 0
  for (int64_t e = 0; e < n; ++e) {
    const float s = r.scale[e / block];
    if (s > 0) {
      r.v[e] = static_cast<double>(x[nf4_at(e, n_t, D, axis)]) / s;
      r.code[e] = nf4_nearest(r.v[e]);
    }
    r.decoded[nf4_at(e, n_t, D, axis)] = static_cast<float>(kNf4Paper[r.code[e]]) * s;
  }
  return r;
}

}  // namespace kvsim::test::direct
