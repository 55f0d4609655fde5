// The arithmetic of the quantization kernels (sim/kernels/quant.h), once, as host-device functions
// (sim/base/hd.h): work items that each produce values no other item writes. ref
// (sim/kernels/ref/quant.cpp) runs every kernel's items one after another in the kernels' order,
// omp (sim/kernels/omp/quant.cpp) the same items over threads, and each CUDA kernel
// (cuda/quant.cu) is a grid-stride loop over one item function and does nothing else: the three
// agree bit for bit. tests/test_quant.cpp checks ref against a direct implementation of the formats
// written apart (tests/quant_direct.h).
//
// Layouts, rounding and tie rules are the comments of sim/kernels/quant.h. std::min/max/clamp are
// written out with the same comparisons (so signed zeros pick the operand std:: would), which the
// device compiles without relaxed constexpr. Needs -ffp-contract=off on the host and --fmad=false
// on the device (both set by CMake): `code * scale + min` must not become an FMA.
//
// Work items (one GPU thread each):
//   uniform params   one per block:        min/max over the block -> fp16 min and scale
//   uniform codes    one per code byte:    8 / bits codes packed into a byte no other item writes
//   uniform decode   one per output float: y[t, d]
//   nf4 absmax       one per block
//   nf4 dq mean      one in all:           a sequential double sum (a tree sum would round differently)
//   nf4 dq group     one per 256 blocks:   fp32 scale and int8 codes of the group's absmax values
//   nf4 codes        one per code byte:    two 4-bit codes
//   nf4 decode       one per output float: y[t, d]
#pragma once

#include <cmath>
#include <cstdint>

#include "sim/base/half.h"
#include "sim/base/hd.h"

namespace kvsim::core {

// std::min / std::max / std::clamp / std::fabs with their exact comparisons.
KVSIM_HD float min_like_std(float a, float b) { return b < a ? b : a; }
KVSIM_HD float max_like_std(float a, float b) { return a < b ? b : a; }
KVSIM_HD float clamp_like_std(float v, float lo, float hi) { return v < lo ? lo : (hi < v ? hi : v); }
KVSIM_HD float abs_f32(float v) { return bits_f32(f32_bits(v) & 0x7fffffffu); }
KVSIM_HD float floor_f32(float v) { return ::floorf(v); }

// ---- uniform asymmetric b-bit ------------------------------------------------------------------

// A [n_t, D] tile cut into blocks of `group` elements along one axis (sim/kernels/quant.h).
struct UniformShape {
  int64_t n_t = 0, D = 0, group = 32;
  int bits = 4;
  bool channel = false;  // axis = channel: a block is `group` tokens of one channel
};

KVSIM_HD int64_t uniform_blocks(const UniformShape& s) { return s.n_t * s.D / s.group; }
KVSIM_HD int64_t uniform_block_bytes(const UniformShape& s) { return s.group * s.bits / 8; }
KVSIM_HD int64_t uniform_code_bytes(const UniformShape& s) { return uniform_blocks(s) * uniform_block_bytes(s); }

// Element j of block b is x[uniform_block_base(s, b) + j * uniform_block_stride(s)].
KVSIM_HD int64_t uniform_block_base(const UniformShape& s, int64_t b) {
  if (!s.channel) {
    const int64_t per_row = s.D / s.group;
    return (b / per_row) * s.D + (b % per_row) * s.group;
  }
  return (b / s.D) * s.group * s.D + (b % s.D);
}
KVSIM_HD int64_t uniform_block_stride(const UniformShape& s) { return s.channel ? s.D : 1; }

// Item b of n_blocks: the block's min and max, rounded to fp16 before any code is computed.
KVSIM_HD void uniform_params_item(const float* x,  // [n_t, D]
                                  const UniformShape& s, int64_t b,
                                  uint16_t* min_f16,    // [n_blocks]
                                  uint16_t* scale_f16)  // [n_blocks]
{
  const float* xb = x + uniform_block_base(s, b);
  const int64_t st = uniform_block_stride(s);
  float mn = INFINITY, mx = -INFINITY;
  for (int64_t j = 0; j < s.group; ++j) {
    mn = min_like_std(mn, xb[j * st]);
    mx = max_like_std(mx, xb[j * st]);
  }
  const float levels = static_cast<float>((1 << s.bits) - 1);
  min_f16[b] = f32_to_f16(mn);
  scale_f16[b] = f32_to_f16((mx - mn) / levels);
}

// One code: clamp(floor((x - min) / scale + 0.5), 0, 2^b - 1); 0 where the fp16 scale is 0.
// A NaN (inputs beyond the fp16 range make the fp16 min infinite) gives 0, where a plain
// float-to-integer conversion would be undefined.
KVSIM_HD uint32_t uniform_code(float x, float fmin, float fscale, int bits) {
  const float levels = static_cast<float>((1 << bits) - 1);
  const float c = fscale > 0 ? floor_f32((x - fmin) / fscale + 0.5f) : 0.0f;
  const float k = clamp_like_std(c, 0.0f, levels);
  return k == k ? static_cast<uint32_t>(k) : 0u;
}

// Which byte of the packed code array item i fills, and the block it lies in. axis = token: item
// i is byte i (consecutive items read consecutive floats). axis = channel: the channel varies
// fastest over the items, so a warp reads 32 adjacent channels of one token (coalesced).
KVSIM_HD int64_t uniform_codes_item_byte(const UniformShape& s, int64_t i, int64_t* block) {
  const int64_t bpb = uniform_block_bytes(s);
  if (!s.channel) {
    *block = i / bpb;
    return i;
  }
  const int64_t c = i % s.D, rest = i / s.D;
  const int64_t k = rest % bpb, r = rest / bpb;
  *block = r * s.D + c;
  return *block * bpb + k;
}

// Item i of uniform_code_bytes(s): 8 / bits codes of one block, little-endian in their byte.
KVSIM_HD void uniform_codes_item(const float* x,  // [n_t, D]
                                 const UniformShape& s,
                                 const uint16_t* min_f16,    // [n_blocks]
                                 const uint16_t* scale_f16,  // [n_blocks]
                                 int64_t i,
                                 uint8_t* codes)  // [n_t * D * bits / 8]
{
  int64_t b = 0;
  const int64_t byte = uniform_codes_item_byte(s, i, &b);
  const int per_byte = 8 / s.bits;
  const int64_t j0 = (byte - b * uniform_block_bytes(s)) * per_byte;
  const float* xb = x + uniform_block_base(s, b);
  const int64_t st = uniform_block_stride(s);
  const float fmin = f16_to_f32(min_f16[b]), fscale = f16_to_f32(scale_f16[b]);
  uint32_t packed = 0;
  for (int u = 0; u < per_byte; ++u) packed |= uniform_code(xb[(j0 + u) * st], fmin, fscale, s.bits) << (u * s.bits);
  codes[byte] = static_cast<uint8_t>(packed);
}

// Item p of n_t * D: y[p] = code * scale + min (one thread per output float, coalesced writes).
KVSIM_HD void uniform_decode_item(const uint8_t* codes,       // [n_t * D * bits / 8]
                                  const uint16_t* min_f16,    // [n_blocks]
                                  const uint16_t* scale_f16,  // [n_blocks]
                                  const UniformShape& s, int64_t p,
                                  float* y)  // [n_t, D]
{
  const int64_t t = p / s.D, d = p % s.D;
  const int64_t b = s.channel ? (t / s.group) * s.D + d : t * (s.D / s.group) + d / s.group;
  const int64_t j = s.channel ? t % s.group : d % s.group;
  const int per_byte = 8 / s.bits;
  const uint32_t mask = (1u << s.bits) - 1u;
  const uint8_t* in = codes + b * uniform_block_bytes(s);
  const uint32_t code = (in[j / per_byte] >> ((j % per_byte) * s.bits)) & mask;
  const float fmin = f16_to_f32(min_f16[b]), fscale = f16_to_f32(scale_f16[b]);
  y[p] = static_cast<float>(code) * fscale + fmin;
}

// ---- NF4 (QLoRA) -------------------------------------------------------------------------------

// The 16 NormalFloat-4 values (QLoRA, arXiv 2305.14314, Appendix E), ascending: the one copy of
// the digits, expanded into kvsim::kNf4Values (sim/kernels/ref/quant.cpp) and into the table below
// (a device function cannot read a host array, so a GPU block builds its own copy).
#define KVSIM_NF4_VALUES                                                                              \
  -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,    \
      -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f, \
      0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f

// The values and the midpoints between neighbours.
struct Nf4Table {
  float values[16];
  float mids[15];
};

KVSIM_HD void nf4_table_init(Nf4Table* t) {
  const float v[16] = {KVSIM_NF4_VALUES};
  for (int i = 0; i < 16; ++i) t->values[i] = v[i];
  for (int i = 0; i < 15; ++i) t->mids[i] = 0.5f * (v[i] + v[i + 1]);
}

// Nearest value's index = number of midpoints strictly below v (halfway goes to the lower index).
KVSIM_HD uint32_t nf4_nearest(float v, const Nf4Table& t) {
  uint32_t idx = 0;
  for (int i = 0; i < 15; ++i) idx += v > t.mids[i] ? 1u : 0u;
  return idx;
}

struct Nf4Shape {
  int64_t n_t = 0, D = 0, block = 64;
  bool channel = false;  // blocks run over the column-major order of the tile
};

KVSIM_HD int64_t nf4_blocks(const Nf4Shape& s) { return s.n_t * s.D / s.block; }
KVSIM_HD int64_t nf4_dq_groups(const Nf4Shape& s) { return (nf4_blocks(s) + 255) / 256; }

// Element e of the block order lies at x[nf4_index(s, e)].
KVSIM_HD int64_t nf4_index(const Nf4Shape& s, int64_t e) { return s.channel ? (e % s.n_t) * s.D + e / s.n_t : e; }

// Item b of n_blocks: max |x| over the block.
KVSIM_HD void nf4_absmax_item(const float* x,  // [n_t, D]
                              const Nf4Shape& s, int64_t b,
                              float* absmax)  // [n_blocks]
{
  float m = 0;
  for (int64_t j = 0; j < s.block; ++j) m = max_like_std(m, abs_f32(x[nf4_index(s, b * s.block + j)]));
  absmax[b] = m;
}

// The single item of the mean: a sequential double sum (a tree sum would round differently).
KVSIM_HD float nf4_dq_mean(const float* absmax,  // [n_blocks]
                           int64_t n_blocks) {
  double mean = 0;
  for (int64_t i = 0; i < n_blocks; ++i) mean += absmax[i];
  return n_blocks ? static_cast<float>(mean / static_cast<double>(n_blocks)) : 0.0f;
}

// Item g of the groups of 256 blocks: symmetric 8-bit codes of absmax - mean.
KVSIM_HD void nf4_dq_group_item(const float* absmax,  // [n_blocks]
                                int64_t n_blocks, float mean, int64_t g,
                                float* dq_scale,   // [n_groups]
                                int8_t* absmax_q)  // [n_blocks]
{
  const int64_t end = g * 256 + 256 < n_blocks ? g * 256 + 256 : n_blocks;
  float m = 0;
  for (int64_t i = g * 256; i < end; ++i) m = max_like_std(m, abs_f32(absmax[i] - mean));
  const float sc = m / 127.0f;
  dq_scale[g] = sc;
  for (int64_t i = g * 256; i < end; ++i)
    absmax_q[i] = sc > 0
                      ? static_cast<int8_t>(clamp_like_std(floor_f32((absmax[i] - mean) / sc + 0.5f), -127.0f, 127.0f))
                      : static_cast<int8_t>(0);
}

// What block b decodes with: its absmax, or the double-quantized reconstruction.
// absmax_q == nullptr selects the plain absmax.
KVSIM_HD float nf4_block_scale(const float* absmax, const int8_t* absmax_q, const float* dq_scale, float dq_mean,
                               int64_t b) {
  if (!absmax_q) return absmax[b];
  return static_cast<float>(absmax_q[b]) * dq_scale[b / 256] + dq_mean;
}

// Item i of n_t * D / 2: the byte holding the codes of elements 2i and 2i + 1 (one block: the
// block size is even). dq_mean is read through a pointer: on the GPU it is computed there.
KVSIM_HD void nf4_codes_item(const float* x,  // [n_t, D]
                             const Nf4Shape& s,
                             const float* absmax,     // [n_blocks]
                             const int8_t* absmax_q,  // [n_blocks], nullptr without double quantization
                             const float* dq_scale,   // [n_groups]
                             const float* dq_mean,    // [1]
                             const Nf4Table& tab, int64_t i,
                             uint8_t* codes)  // [n_t * D / 2]
{
  const int64_t e = 2 * i, b = e / s.block;
  const float scale = nf4_block_scale(absmax, absmax_q, dq_scale, absmax_q ? *dq_mean : 0.0f, b);
  const float inv = scale > 0 ? 1.0f / scale : 0.0f;
  const float v0 = x[nf4_index(s, e)], v1 = x[nf4_index(s, e + 1)];
  const uint32_t c0 = scale > 0 ? nf4_nearest(v0 * inv, tab) : 7u;  // 7 is the code of 0.0
  const uint32_t c1 = scale > 0 ? nf4_nearest(v1 * inv, tab) : 7u;
  codes[i] = static_cast<uint8_t>(c0 | (c1 << 4));
}

// Item p of n_t * D: y[p] (p = t * D + d, one thread per output float, coalesced writes).
KVSIM_HD void nf4_decode_item(const uint8_t* codes,  // [n_t * D / 2]
                              const Nf4Shape& s,
                              const float* absmax,     // [n_blocks]
                              const int8_t* absmax_q,  // [n_blocks], nullptr without double quantization
                              const float* dq_scale,   // [n_groups]
                              float dq_mean, const Nf4Table& tab, int64_t p,
                              float* y)  // [n_t, D]
{
  const int64_t e = s.channel ? (p % s.D) * s.n_t + p / s.D : p;
  const float scale = nf4_block_scale(absmax, absmax_q, dq_scale, dq_mean, e / s.block);
  y[p] = tab.values[(codes[e / 2] >> ((e % 2) * 4)) & 0xfu] * scale;
}

// ---- fp8 (e4m3fn, e5m2) with a float32 scale -------------------------------------------------------

// A format by its field widths: e4m3fn (OCP: bias 7, no inf, NaN = S.1111.111, max 448) and e5m2
// (IEEE-style: bias 15, inf and NaN at exponent 31, max 57344).
struct Fp8Spec {
  int exp_bits = 4, man_bits = 3, bias = 7;
  bool ieee = false;  // e5m2: the all-ones exponent holds inf and NaN; e4m3fn: only S.1111.111 is NaN
  float max = 448.0f;
};
KVSIM_HD Fp8Spec fp8_spec(bool e5m2) {
  return e5m2 ? Fp8Spec{5, 2, 15, true, 57344.0f} : Fp8Spec{4, 3, 7, false, 448.0f};
}

// The value of a code: sign, then subnormal (exponent field 0) m * 2^(1 - bias - man_bits) or
// normal (1 + m / 2^man_bits) * 2^(e - bias); inf and NaN where the format has them.
KVSIM_HD float fp8_decode(uint32_t code, const Fp8Spec& f) {
  const uint32_t man_mask = (1u << f.man_bits) - 1u, exp_mask = (1u << f.exp_bits) - 1u;
  const uint32_t m = code & man_mask, e = (code >> f.man_bits) & exp_mask;
  const bool neg = (code & 0x80u) != 0;
  float v;
  if (f.ieee && e == exp_mask)
    v = m == 0 ? INFINITY : NAN;
  else if (!f.ieee && e == exp_mask && m == man_mask)
    v = NAN;
  else if (e == 0)
    v = ::ldexpf(static_cast<float>(m), 1 - f.bias - f.man_bits);
  else
    v = ::ldexpf(static_cast<float>(m + (1u << f.man_bits)), static_cast<int>(e) - f.bias - f.man_bits);
  return neg ? -v : v;
}

// The code of y, saturating: |y| beyond max (inf included) gives max's code, NaN the format's NaN
// (sign kept). Else round to nearest, ties to even mantissa: y / quantum of its binade (a power of
// two, so exact) rounded by rintf (the default mode: to nearest even), where an even integer is an
// even mantissa; a carry into the next binade gives mantissa 0 there. Subnormals share the
// smallest normal binade's quantum, so their integer is the code itself.
KVSIM_HD uint32_t fp8_encode(float y, const Fp8Spec& f) {
  const uint32_t sign = (f32_bits(y) >> 24) & 0x80u;
  if (y != y) return sign | (f.ieee ? 0x7eu : 0x7fu);
  const float a = clamp_like_std(abs_f32(y), 0.0f, f.max);
  const int min_exp = 1 - f.bias;  // exponent of the smallest normal
  const uint32_t one = 1u << f.man_bits;
  const int e32 = static_cast<int>((f32_bits(a) >> 23) & 0xffu) - 127;  // a's binade (float32 subnormals: < min_exp)
  if (e32 < min_exp) {
    const float r = ::rintf(::ldexpf(a, f.man_bits - min_exp));  // in [0, 2^man_bits]
    return sign | static_cast<uint32_t>(r);                      // 2^man_bits is the smallest normal's code
  }
  int e = e32;
  uint32_t r = static_cast<uint32_t>(::rintf(::ldexpf(a, f.man_bits - e)));  // in [2^m, 2^(m+1)]
  if (r == 2 * one) r = one, ++e;
  return sign | (static_cast<uint32_t>(e + f.bias) << f.man_bits) | (r - one);
}

// Item t of n_t: the token's scale max_d |x[t, d]| / max (the format's largest finite value), or
// 1 where the token is all zeros (any scale decodes it exactly).
KVSIM_HD void fp8_token_scale_item(const float* x,  // [n_t, D]
                                   int64_t D, const Fp8Spec& f, int64_t t,
                                   float* scale)  // [n_t]
{
  float m = 0;
  for (int64_t d = 0; d < D; ++d) m = max_like_std(m, abs_f32(x[t * D + d]));
  scale[t] = m > 0 ? m / f.max : 1.0f;
}

// Item p of n_t * D: code = encode(x / s), s = scale[p / D] (per token) or scale[0].
KVSIM_HD void fp8_codes_item(const float* x,      // [n_t, D]
                             const float* scale,  // [n_t] or [1]
                             bool per_token, int64_t D, const Fp8Spec& f, int64_t p,
                             uint8_t* codes)  // [n_t, D]
{
  const float s = scale[per_token ? p / D : 0];
  codes[p] = static_cast<uint8_t>(fp8_encode(x[p] / s, f));
}

// Item p of n_t * D: y = decode(code) * s.
KVSIM_HD void fp8_decode_item(const uint8_t* codes,  // [n_t, D]
                              const float* scale,    // [n_t] or [1]
                              bool per_token, int64_t D, const Fp8Spec& f, int64_t p,
                              float* y)  // [n_t, D]
{
  y[p] = fp8_decode(codes[p], f) * scale[per_token ? p / D : 0];
}

// ---- int8 symmetric, per token or per group of channels ---------------------------------------

// Item b of n_t * D / group: the group's scale max |x| / 127 rounded to fp16 before any code is
// computed (encoder and decoder agree).
KVSIM_HD void int8_scale_item(const float* x,  // [n_t, D]
                              int64_t group, int64_t b,
                              uint16_t* scale_f16)  // [n_t * D / group]
{
  float m = 0;
  for (int64_t j = 0; j < group; ++j) m = max_like_std(m, abs_f32(x[b * group + j]));
  scale_f16[b] = f32_to_f16(m / 127.0f);
}

// Item p of n_t * D: code = clamp(rint(x / s), -127, 127), ties to even as rintf rounds; 0 where
// the fp16 scale is 0 (an all-zero group, or one so small its scale underflows fp16).
KVSIM_HD void int8_codes_item(const float* x,             // [n_t, D]
                              const uint16_t* scale_f16,  // [n_t * D / group]
                              int64_t group, int64_t p,
                              int8_t* codes)  // [n_t, D]
{
  const float s = f16_to_f32(scale_f16[p / group]);
  const float c = s > 0 ? clamp_like_std(::rintf(x[p] / s), -127.0f, 127.0f) : 0.0f;
  codes[p] = static_cast<int8_t>(c == c ? c : 0.0f);
}

// Item p of n_t * D: y = code * s.
KVSIM_HD void int8_decode_item(const int8_t* codes,        // [n_t, D]
                               const uint16_t* scale_f16,  // [n_t * D / group]
                               int64_t group, int64_t p,
                               float* y)  // [n_t, D]
{
  y[p] = static_cast<float>(codes[p]) * f16_to_f32(scale_f16[p / group]);
}

}  // namespace kvsim::core
