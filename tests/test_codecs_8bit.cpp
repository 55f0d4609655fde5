// fp8 and int8 (sim/kernels/quant_core.h, sim/strategies/codecs_8bit.h): the formats against a decode
// table built here from their definitions (sign, exponent and mantissa fields, bias, subnormals,
// NaN/inf codes) and a brute-force nearest-value encoder written apart from the kernels' binade
// arithmetic; rounding ties, saturation, the codecs' reconstruction and bytes worked out by hand in
// the comments; omp against ref bit for bit.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "sim/base/error.h"
#include "sim/base/spec.h"
#include "sim/kernels/quant.h"
#include "sim/kernels/quant_core.h"
#include "sim/strategies/quant_codecs.h"
#include "tests/backend_harness.h"

using namespace kvsim;
using test::kBitExact;

namespace {

// The definition: value = (-1)^S * 2^(E - bias) * (1 + M / 2^m) for E > 0, (-1)^S * 2^(1 - bias) * M / 2^m
// for E = 0. e4m3fn: E 4 bits, m 3, bias 7, S.1111.111 NaN, no inf. e5m2: E 5, m 2, bias 15, E = 31 inf
// (M = 0) or NaN.
double table_value(int code, bool e5m2) {
  const int eb = e5m2 ? 5 : 4, mb = e5m2 ? 2 : 3, bias = e5m2 ? 15 : 7;
  const int S = code >> 7, E = (code >> mb) & ((1 << eb) - 1), M = code & ((1 << mb) - 1);
  const double sign = S ? -1.0 : 1.0;
  if (e5m2 && E == 31) return M == 0 ? sign * std::numeric_limits<double>::infinity() : std::nan("");
  if (!e5m2 && E == 15 && M == 7) return std::nan("");
  const double frac = static_cast<double>(M) / (1 << mb);
  if (E == 0) return sign * std::pow(2.0, 1 - bias) * frac;
  return sign * std::pow(2.0, E - bias) * (1.0 + frac);
}

// Nearest finite value of the table with the sign of y, ties to the even code, beyond the largest
// finite value saturated to it.
int brute_encode(float y, bool e5m2) {
  const double a = std::fabs(static_cast<double>(y));
  int best = 0;
  double best_d = std::numeric_limits<double>::infinity();
  for (int c = 0; c < 128; ++c) {
    const double v = table_value(c, e5m2);
    if (!std::isfinite(v)) continue;
    const double d = std::fabs(a - v);
    if (d < best_d || (d == best_d && c % 2 == 0)) best = c, best_d = d;
  }
  return best | (std::signbit(y) ? 0x80 : 0);
}

uint32_t encode(float y, bool e5m2) { return core::fp8_encode(y, core::fp8_spec(e5m2)); }

std::unique_ptr<CodecState> state(const std::string& spec, int64_t D, int64_t T) {
  return make_codec(parse_spec(spec))->make_state(D, T);
}

}  // namespace

TEST_CASE("fp8 e4m3fn and e5m2: all 256 codes decode to the format's definition, and encode back") {
  for (bool e5m2 : {false, true}) {
    INFO((e5m2 ? "e5m2" : "e4m3"));
    int n_nan = 0, n_inf = 0;
    for (int c = 0; c < 256; ++c) {
      INFO("code " << c);
      const double want = table_value(c, e5m2);
      const float got = core::fp8_decode(static_cast<uint32_t>(c), core::fp8_spec(e5m2));
      if (std::isnan(want)) {
        CHECK(std::isnan(got));
        ++n_nan;
        continue;
      }
      CHECK(static_cast<double>(got) == want);
      CHECK(std::signbit(got) == (c >= 128));  // -0 is code 0x80
      if (std::isinf(want)) {
        ++n_inf;
        continue;
      }
      CHECK(encode(got, e5m2) == static_cast<uint32_t>(c));
    }
    // e4m3fn: 0x7f and 0xff are NaN; e5m2: 3 NaN mantissas and one inf per sign.
    CHECK(n_nan == (e5m2 ? 6 : 2));
    CHECK(n_inf == (e5m2 ? 2 : 0));
  }
  // The table's landmarks (methods.md §4.1): max, min normal, min subnormal.
  CHECK(table_value(0x7e, false) == 448.0);
  CHECK(table_value(0x08, false) == std::ldexp(1.0, -6));
  CHECK(table_value(0x01, false) == std::ldexp(1.0, -9));
  CHECK(table_value(0x7b, true) == 57344.0);
  CHECK(table_value(0x04, true) == std::ldexp(1.0, -14));
  CHECK(table_value(0x01, true) == std::ldexp(1.0, -16));
}

TEST_CASE("fp8: rounding ties go to the even mantissa, beyond max saturates (by hand)") {
  // e4m3: 1.0 = 0x38, 1.125 = 0x39, 1.25 = 0x3a; 1.0625 halfway -> 0x38, 1.1875 halfway -> 0x3a.
  CHECK(encode(1.0625f, false) == 0x38);
  CHECK(encode(1.1875f, false) == 0x3a);
  CHECK(encode(-1.1875f, false) == 0xba);
  CHECK(encode(std::nextafter(1.0625f, 2.0f), false) == 0x39);  // just above the tie
  // 16 = 0x58, 18 = 0x59: 17 -> 0x58. Subnormal quantum 2^-9: 2^-10 -> 0 (even), 3 * 2^-10 -> 0x02,
  // 7.5 * 2^-9 (between the largest subnormal 0x07 and the smallest normal 0x08) -> 0x08.
  CHECK(encode(17.0f, false) == 0x58);
  CHECK(encode(std::ldexp(1.0f, -10), false) == 0x00);
  CHECK(encode(3 * std::ldexp(1.0f, -10), false) == 0x02);
  CHECK(encode(7.5f * std::ldexp(1.0f, -9), false) == 0x08);
  // Binade carry: 15.5 is halfway between 15 (0x57) and 16 (0x58, even) -> 0x58.
  CHECK(encode(15.5f, false) == 0x58);
  // 448 is max (0x7e); 464 (halfway to the NaN code's 480) and inf saturate to it, NaN stays NaN.
  CHECK(encode(464.0f, false) == 0x7e);
  CHECK(encode(1e30f, false) == 0x7e);
  CHECK(encode(-INFINITY, false) == 0xfe);
  CHECK(encode(NAN, false) == 0x7f);
  // e5m2: 1.0 = 0x3c, 1.25 = 0x3d, 1.5 = 0x3e: 1.125 -> 0x3c, 1.375 -> 0x3e; max 57344 = 0x7b,
  // inf saturates to it (not to the inf code 0x7c).
  CHECK(encode(1.125f, true) == 0x3c);
  CHECK(encode(1.375f, true) == 0x3e);
  CHECK(encode(61440.0f, true) == 0x7b);
  CHECK(encode(INFINITY, true) == 0x7b);
  CHECK(encode(-0.0f, true) == 0x80);
}

TEST_CASE("fp8: the kernels' encoder equals a brute-force nearest-value search (midpoints, their neighbours, random)") {
  std::mt19937 rng(20261202);
  for (bool e5m2 : {false, true}) {
    INFO((e5m2 ? "e5m2" : "e4m3"));
    std::vector<float> ys;
    for (int c = 0; c + 1 < 127; ++c) {
      const double lo = table_value(c, e5m2), hi = table_value(c + 1, e5m2);
      if (!std::isfinite(hi)) continue;
      const float mid = static_cast<float>((lo + hi) / 2);  // exact in float32
      for (float y : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f), static_cast<float>(lo)})
        ys.push_back(y), ys.push_back(-y);
    }
    std::normal_distribution<float> n(0.0f, 1.0f);
    const double fmax = e5m2 ? 57344.0 : 448.0;
    for (int i = 0; i < 20000; ++i)
      ys.push_back(static_cast<float>(n(rng) * std::pow(2.0, static_cast<int>(rng() % 40) - 24) * (i % 7 ? 1 : fmax)));
    int bad = 0;
    for (float y : ys)
      if (encode(y, e5m2) != static_cast<uint32_t>(brute_encode(y, e5m2)) && bad++ < 5)
        FAIL_CHECK("y = " << y << ": got " << encode(y, e5m2) << ", brute force " << brute_encode(y, e5m2));
    CHECK(bad == 0);
  }
}

TEST_CASE("fp8 codec: scale=one reconstruction and bytes by hand") {
  // e4m3, s = 1: 1.0625 -> 1.0 (tie to even); 0.3: quantum 2^-5 in [0.25, 0.5), 9.6 -> 10 -> 0.3125;
  // -500 saturates to -448; 0.003: subnormal quantum 2^-9, 1.536 -> 2 -> 2^-8.
  auto cs = state("fp8:scale=one", 4, 2);
  SlotCache c(4, 2);
  const float k[4] = {1.0625f, 0.3f, -500.0f, 0.003f}, v[4] = {0.0f, -0.0f, 448.0f, 17.0f};
  cs->store(c, 0, k, v);
  const float kw[4] = {1.0f, 0.3125f, -448.0f, 0.00390625f}, vw[4] = {0.0f, -0.0f, 448.0f, 16.0f};
  test::check_close("keys", c.key(0), kw, 4, kBitExact);
  test::check_close("values", c.value(0), vw, 4, kBitExact);
  CHECK_FALSE(c.exact(0));
  // Squared key error 0.0625^2 + 0.0125^2 + 52^2 + 0.00090625^2 = 2704.00406332...
  double e = 0;
  for (int d = 0; d < 4; ++d)
    e += (static_cast<double>(k[d]) - c.key(0)[d]) * (static_cast<double>(k[d]) - c.key(0)[d]);
  CHECK(e == doctest::Approx(2704.0040633213).epsilon(1e-9));
  CHECK(cs->bytes(c) == 8.0);  // 1 byte per element, no scale
}

TEST_CASE("fp8 codec: scales from the prompt (head, tensor, dynamic) and per token, bytes by hand") {
  // Layer of Hkv = 2 heads, T = 2, D = 4, prompt P = 1. Head 1's prompt keys reach |896|, its values
  // |100|; head 0's keys |1792|.
  const int64_t Hkv = 2, T = 2, D = 4, P = 1;
  std::vector<float> k(Hkv * T * D, 0.0f), v(Hkv * T * D, 0.0f);
  k[0] = 1792.0f;           // head 0, token 0
  k[T * D + 1] = -896.0f;   // head 1, token 0
  v[T * D + 2] = 100.0f;    // head 1, token 0
  k[T * D + D + 0] = 1e6f;  // head 1, token 1: not prompt, never read by calibrate
  const float kt[4] = {3.0f, 2.2f, 0.0f, -1.0f}, vt[4] = {1.0f, 0.5f, 0.0f, 0.0f};
  SUBCASE("head: s_K = 896 / 448 = 2, s_V = 100 / 448") {
    auto cs = state("fp8:scale=head", D, T);
    cs->calibrate(k.data(), v.data(), Hkv, T, 1, P);
    SlotCache c(D, T);
    cs->store(c, 1, kt, vt);
    // keys / 2: 1.5 exact -> 3; 1.1 -> nearest 1.125 -> 2.25; -0.5 exact.
    const float kw[4] = {3.0f, 2.25f, 0.0f, -1.0f};
    test::check_close("keys", c.key(0), kw, 4, kBitExact);
    CHECK(cs->bytes(c) == 8.0 + 8.0);  // 2 * D payload bytes + an fp32 scale per tensor
  }
  SUBCASE("tensor: s_K = 1792 / 448 = 4 over both heads, its 8 bytes shared by Hkv = 2 caches") {
    auto cs = state("fp8:scale=tensor", D, T);
    cs->calibrate(k.data(), v.data(), Hkv, T, 1, P);
    SlotCache c(D, T);
    cs->store(c, 1, kt, vt);
    // keys / 4: 0.75 exact -> 3; 0.55: quantum 2^-4 in [0.5, 1), 8.8 -> 9 -> 0.5625 -> 2.25; -0.25 exact.
    const float kw[4] = {3.0f, 2.25f, 0.0f, -1.0f};
    test::check_close("keys", c.key(0), kw, 4, kBitExact);
    CHECK(cs->bytes(c) == 8.0 + 4.0);
  }
  SUBCASE("dynamic: s_K = 1792 / 200, s_V = 100 / 100 = 1 (vLLM's constants)") {
    auto cs = state("fp8:scale=dynamic", D, T);
    cs->calibrate(k.data(), v.data(), Hkv, T, 0, P);
    SlotCache c(D, T);
    cs->store(c, 1, kt, vt);
    const float vw[4] = {1.0f, 0.5f, 0.0f, 0.0f};  // s_V = 1: exact
    test::check_close("values", c.value(0), vw, 4, kBitExact);
    // 3 / 8.96 = 0.33482...: quantum 2^-5, 10.714 -> 11 -> 0.34375, times 8.96 = 3.08.
    CHECK(c.key(0)[0] == 0.34375f * (1792.0f / 200.0f));
    CHECK(cs->bytes(c) == 12.0);
  }
  SUBCASE("token: s = max |x_t| / 448 per token, 4 bytes per token and tensor") {
    auto cs = state("fp8:format=e5m2,scale=token", D, T);
    SlotCache c(D, T);
    const float x[4] = {57344.0f * 0.5f, 1.0f, 0.0f, 0.0f};
    cs->store(c, 0, x, x);
    // e5m2, s = 28672 / 57344 = 0.5: 57344 -> max exact; 2 -> exact; decoded times 0.5.
    CHECK(c.key(0)[0] == 28672.0f);
    CHECK(c.key(0)[1] == 1.0f);
    CHECK(cs->bytes(c) == 2 * (4 + 4.0));
  }
  SUBCASE("a prompt-scaled mode refuses to store uncalibrated (the model runner)") {
    auto cs = state("fp8", D, T);
    SlotCache c(D, T);
    CHECK_THROWS_WITH_AS(cs->store(c, 0, kt, vt),
                         doctest::Contains("fp8: scale=tensor sets its scales from the layer's prompt"), UsageError);
  }
}

TEST_CASE("int8 codec: symmetric per-token and per-group reconstruction and bytes by hand") {
  SUBCASE("one fp16 scale per token") {
    auto cs = state("int8", 4, 2);
    SlotCache c(4, 2);
    // s = 2.54 / 127 = 0.02 -> fp16 1311 * 2^-16 = 0.0200042724609375; 2.54 / s = 126.97 -> 127,
    // -1 / s = -49.989 -> -50, 0.01 / s = 0.4999 -> 0, 0.5 / s = 24.995 -> 25; codes * s exact in float.
    const float k[4] = {2.54f, -1.0f, 0.01f, 0.5f};
    // Ties: s = 127 / 127 = 1: 2.5 -> 2, -3.5 -> -4 (to even, as vLLM's float_to_int8_rn).
    const float v[4] = {127.0f, 2.5f, -3.5f, 0.0f};
    cs->store(c, 0, k, v);
    const float kw[4] = {166497 * 0x1p-16f, -65550 * 0x1p-16f, 0.0f, 32775 * 0x1p-16f};
    const float vw[4] = {127.0f, 2.0f, -4.0f, 0.0f};
    test::check_close("keys", c.key(0), kw, 4, kBitExact);
    test::check_close("values", c.value(0), vw, 4, kBitExact);
    CHECK(cs->bytes(c) == 2 * (4 + 2.0));  // D codes + an fp16 scale, keys and values
  }
  SUBCASE("group=2: a scale per two channels") {
    auto cs = state("int8:group=2", 4, 2);
    SlotCache c(4, 2);
    // groups [127, 1.5] (s = 1: 1.5 -> 2) and [0.5, -0.25] (s = 0.5 / 127 -> fp16 0.0039367676 =
    // 129 * 2^-15: 0.5 / s = 127.008 -> 127, -0.25 / s = -63.504 -> -64).
    const float x[4] = {127.0f, 1.5f, 0.5f, -0.25f};
    cs->store(c, 0, x, x);
    const float w[4] = {127.0f, 2.0f, 127 * 129 * 0x1p-15f, -64 * 129 * 0x1p-15f};
    test::check_close("keys", c.key(0), w, 4, kBitExact);
    CHECK(cs->bytes(c) == 2 * (4 + 2 * 2.0));
  }
  SUBCASE("bad parameters: one-line UsageErrors") {
    CHECK_THROWS_WITH_AS(state("int8:group=3", 4, 2), "int8: group=3 does not divide D = 4", UsageError);
    CHECK_THROWS_AS(state("int8:group=-1", 4, 2), UsageError);
    CHECK_THROWS_AS(state("int8:sym=0", 4, 2), UsageError);
    CHECK_THROWS_AS(state("fp8:format=e4m3fnuz", 4, 2), UsageError);
    CHECK_THROWS_AS(state("fp8:scale=channel", 4, 2), UsageError);
    CHECK_THROWS_AS(state("fp8:bits=4", 4, 2), UsageError);
  }
}

namespace {

// Data built to break the kernels: wide magnitudes, values beyond the formats' max, zeros of
// both signs, all-zero tokens, exact fp8 midpoints and int8 ties.
std::vector<float> hostile(int64_t T, int64_t D, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(T * D));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) {
      float& y = x[static_cast<size_t>(t * D + d)];
      const int kind = static_cast<int>((t * 7 + d) % 11);
      y = n(rng) * std::ldexp(1.0f, static_cast<int>(rng() % 30) - 15);
      if (kind == 1) y = 1.0625f * (d % 2 ? -1.0f : 1.0f);  // e4m3 tie at scale 1
      if (kind == 2) y = 1e6f;                              // saturates at scale 1
      if (kind == 3) y = d % 2 ? -0.0f : 0.0f;
      if (kind == 4) y = 2.5f;                    // int8 tie when the token's max is 127
      if (t % 13 == 5) y = d % 3 ? 0.0f : -0.0f;  // an all-zero token
    }
  return x;
}

}  // namespace

TEST_CASE("omp: fp8 and int8 quantization equal ref bit for bit (T in 1, 31, 33, 97, 4097)") {
  int n_cases = 0;
  for (int64_t T : {1, 31, 33, 97, 4097})
    for (int64_t D : {8, 64, 96}) {
      const auto x = hostile(T, D, static_cast<uint32_t>(T * 131 + D));
      for (Fp8Format f : {Fp8Format::e4m3, Fp8Format::e5m2})
        for (float s : {0.0f, 1.0f, 0.37f}) {
          INFO("fp8 T " << T << " D " << D << " e5m2 " << (f == Fp8Format::e5m2) << " scale " << s);
          const float* sp = s > 0 ? &s : nullptr;
          const Fp8Quantized want = ref::quant_fp8(x.data(), T, D, f, sp);
          const Fp8Quantized got = omp::quant_fp8(x.data(), T, D, f, sp);
          test::check_close("codes", got.codes, want.codes, kBitExact);
          test::check_close("scales", got.scale, want.scale, kBitExact);
          std::vector<float> yw(x.size()), yg(x.size(), NAN);
          ref::dequant_fp8(want, yw.data());
          omp::dequant_fp8(want, yg.data());
          test::check_close("decoded", yg, yw, kBitExact);
          ++n_cases;
        }
      for (int64_t g : {D, int64_t{8}, int64_t{4}}) {
        INFO("int8 T " << T << " D " << D << " group " << g);
        const Int8Quantized want = ref::quant_int8(x.data(), T, D, g);
        const Int8Quantized got = omp::quant_int8(x.data(), T, D, g);
        test::check_close("codes", got.codes, want.codes, kBitExact);
        test::check_close("fp16 scales", got.scale_f16, want.scale_f16, kBitExact);
        std::vector<float> yw(x.size()), yg(x.size(), NAN);
        ref::dequant_int8(want, yw.data());
        omp::dequant_int8(want, yg.data());
        test::check_close("decoded", yg, yw, kBitExact);
        ++n_cases;
      }
    }
  MESSAGE(n_cases << " fp8 / int8 cases");
  // ref itself: the fp8 codes of x / s equal the brute-force encoder on the first case.
  const auto x = hostile(33, 8, 7);
  const float s = 0.37f;
  const Fp8Quantized q = ref::quant_fp8(x.data(), 33, 8, Fp8Format::e4m3, &s);
  int bad = 0;
  for (size_t i = 0; i < x.size(); ++i) bad += q.codes[i] != brute_encode(x[i] / s, false);
  CHECK(bad == 0);
}
