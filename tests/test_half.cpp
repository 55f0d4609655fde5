// fp16 / bf16 rounding in sim/base/half.h against independent derivations:
//  - fp16: the compiler's _Float16 conversion (hardware/libgcc rounding, round to nearest even);
//  - bf16: brute force: of the two bf16 neighbours of x, take the nearer in exact double
//    arithmetic, ties to the even bit pattern.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <ios>
#include <limits>
#include <random>
#include <vector>

#include "sim/base/half.h"

using namespace kvsim;

namespace {

uint16_t bf16_nearest_bruteforce(float x) {
  const uint32_t u = f32_bits(x);
  const uint16_t lo = static_cast<uint16_t>(u >> 16);  // truncation toward zero in magnitude
  const uint16_t hi = static_cast<uint16_t>(lo + 1);   // next bf16 away from zero
  const double dlo = std::fabs(static_cast<double>(bf16_to_f32(lo)) - x);
  const double dhi = std::fabs(static_cast<double>(bf16_to_f32(hi)) - x);
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1u) ? hi : lo;
}

std::vector<float> test_values(uint32_t seed, int n) {
  std::mt19937 rng(seed);
  std::vector<float> v = {0.0f,     -0.0f,         1.0f,           -1.0f,   0.5f,     65504.0f,
                          65519.0f, 65520.0f,      1e-8f,          6.1e-5f, 5.96e-8f, 2.98e-8f,
                          3.0e-8f,  1.0009765625f, 1.00048828125f, 3.4e38f, 1e-40f};
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < n; ++i) {
    float f = bits_f32(bits(rng));
    if (std::isfinite(f)) v.push_back(f);
  }
  std::normal_distribution<float> nd(0.0f, 10.0f);
  for (int i = 0; i < n; ++i) v.push_back(nd(rng));
  return v;
}

}  // namespace

TEST_CASE("f32_to_f16 matches _Float16 rounding (seed 11)") {
  int mismatches = 0;
  for (float x : test_values(11, 200000)) {
    const _Float16 ref = static_cast<_Float16>(x);
    uint16_t ref_bits;
    std::memcpy(&ref_bits, &ref, 2);
    const uint16_t got = f32_to_f16(x);
    if (got != ref_bits && mismatches++ < 5) {
      MESSAGE("x = " << x << " got 0x" << std::hex << got << " expected 0x" << ref_bits);
    }
    // widening is exact: compare with the compiler's
    CHECK_EQ(f16_to_f32(ref_bits) == static_cast<float>(ref) || std::isnan(x), true);
  }
  CHECK(mismatches == 0);
}

TEST_CASE("f32_to_f16 matches _Float16 on a sweep of every float bit pattern and at every rounding boundary") {
  // The quantization kernels keep fp16 scales through these functions on the host and the GPU
  // (sim/kernels/quant_core.h), so the sweep is wide: a stride coprime to 2^32 over all patterns
  // (every exponent, both signs, inf, subnormals; NaN only needs to stay NaN), plus both
  // neighbours of each halfway point between consecutive halves (the ties of the normal and the
  // subnormal paths).
  auto want = [](float x) {
    const _Float16 h = static_cast<_Float16>(x);
    uint16_t u;
    std::memcpy(&u, &h, 2);
    return u;
  };
  int64_t bad = 0, n = 0;
  auto check = [&](float x) {
    ++n;
    bad += std::isnan(x) ? !std::isnan(f16_to_f32(f32_to_f16(x))) : f32_to_f16(x) != want(x);
  };
  for (uint64_t u = 0; u < (uint64_t{1} << 32); u += 251) check(bits_f32(static_cast<uint32_t>(u)));
  for (uint32_t h = 0; h < 0x7c00u; ++h)
    for (uint32_t sign : {0u, 0x8000u}) {
      const float mid = 0.5f * (f16_to_f32(static_cast<uint16_t>(h)) + f16_to_f32(static_cast<uint16_t>(h + 1)));
      for (int k = -1; k <= 1; ++k) check(bits_f32((f32_bits(mid) + static_cast<uint32_t>(k)) | (sign << 16)));
    }
  INFO(bad << " of " << n << " conversions differ from _Float16");
  CHECK(bad == 0);
}

TEST_CASE("f16_to_f32 is exact for all 65536 bit patterns (against _Float16)") {
  for (uint32_t b = 0; b < 65536; ++b) {
    const uint16_t h = static_cast<uint16_t>(b);
    _Float16 ref;
    std::memcpy(&ref, &h, 2);
    const float r = static_cast<float>(ref), got = f16_to_f32(h);
    if (std::isnan(r)) {
      CHECK(std::isnan(got));
    } else {
      REQUIRE_MESSAGE(f32_bits(got) == f32_bits(r), "pattern 0x" << std::hex << b);
    }
  }
}

TEST_CASE("f32_to_bf16 picks the nearest bf16, ties to even (seed 12)") {
  int mismatches = 0;
  for (float x : test_values(12, 200000)) {
    if (std::fabs(x) > 3.38e38f) continue;  // the upper neighbour would be inf: covered below
    const uint16_t want = bf16_nearest_bruteforce(x), got = f32_to_bf16(x);
    if (got != want && mismatches++ < 5) MESSAGE("x = " << x << " got " << got << " expected " << want);
  }
  CHECK(mismatches == 0);
  // Hand cases: 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties to even -> 1.0 (0x3f80).
  CHECK(f32_to_bf16(1.00390625f) == 0x3f80);
  // 1 + 3*2^-8 is halfway between 1+2^-7 (odd, 0x3f81) and 1+2^-6 (even, 0x3f82) -> 0x3f82.
  CHECK(f32_to_bf16(1.01171875f) == 0x3f82);
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::infinity())) == std::numeric_limits<float>::infinity());
}
