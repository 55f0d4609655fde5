// float32 <-> float16 / bfloat16 conversion, round to nearest, ties to even.
// Used by the trace writer (stored dtypes) and by the quantization kernels that keep scales in
// fp16 (sim/kernels/quant_core.h), so the fp16 conversions are host-device functions (sim/base/hd.h).
#pragma once

#include <cstdint>
#include <cstring>

#include "sim/base/hd.h"

namespace kvsim {

KVSIM_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
KVSIM_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  uint32_t lsb = (u >> 16) & 1u;
  u += 0x7fffu + lsb;
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

KVSIM_HD uint16_t f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow (>= 65520) -> inf
  if (ax < 0x38800000u) {
    // Subnormal or zero in fp16: value = m * 2^-24. Round ax (as float) to a multiple of 2^-24.
    if (ax < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25: rounds to 0
    uint32_t e = ax >> 23;                                     // biased exponent, 102..112
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;                 // 24-bit significand
    uint32_t shift = 126 - e;                                  // 14..24
    uint32_t half_v = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_v & 1u))) ++half_v;
    return static_cast<uint16_t>(sign | half_v);
  }
  // Normal: rebias exponent 127 -> 15 and round the 13 dropped mantissa bits.
  uint32_t v = ax - 0x38000000u;  // (127-15) << 23
  uint32_t lsb = (v >> 13) & 1u;
  v += 0x0fffu + lsb;
  return static_cast<uint16_t>(sign | (v >> 13));
}

KVSIM_HD float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu;
  uint32_t m = h & 0x3ffu;
  if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13));
  if (e == 0) {
    if (m == 0) return bits_f32(sign);
    float f = static_cast<float>(m) * (1.0f / 16777216.0f);  // m * 2^-24
    return sign ? -f : f;
  }
  return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

}  // namespace kvsim
