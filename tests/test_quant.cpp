// Quantization kernels of ref (sim/kernels/quant.h). Expected values are computed by hand in the
// comments, or from the NormalFloat-4 table as printed in the QLoRA paper (Appendix E), copied
// independently of the kernels' table (tests/quant_direct.h), or, on the kernel case list
// (tests/quant_cases.h), from the direct implementation of tests/quant_direct.h. omp and cuda
// against ref: tests/test_backend_quant.cpp.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "sim/base/error.h"
#include "sim/kernels/quant.h"
#include "sim/kernels/quant_core.h"
#include "tests/quant_cases.h"
#include "tests/quant_direct.h"

using namespace kvsim;
using test::direct::kNf4Paper;

namespace {

std::vector<float> dq(const UniformQuantized& q) {
  std::vector<float> y(static_cast<size_t>(q.n_t * q.D));
  ref::dequant_uniform(q, y.data());
  return y;
}
std::vector<float> dq(const Nf4Quantized& q) {
  std::vector<float> y(static_cast<size_t>(q.n_t * q.D));
  ref::dequant_nf4(q, y.data());
  return y;
}

double rel_err(const std::vector<float>& x, const std::vector<float>& y) {
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num += (x[i] - y[i]) * (x[i] - y[i]);
    den += x[i] * x[i];
  }
  return std::sqrt(num / den);
}

}  // namespace

TEST_CASE("uniform 2-bit, one token of 4 channels: hand cases") {
  // [0, 1, 2, 3]: min 0, scale (3-0)/3 = 1 (exact in fp16): codes 0..3, reconstruction exact.
  std::vector<float> x = {0, 1, 2, 3};
  auto q = ref::quant_uniform(x.data(), 1, 4, 2, QuantAxis::token, 4);
  CHECK(dq(q) == x);
  CHECK(q.codes.size() == 1);
  CHECK(q.codes[0] == (0 | 1 << 2 | 2 << 4 | 3 << 6));
  // [0, 0.4, 0.6, 3]: scale 1; codes floor(0.4 + 0.5) = 0, floor(0.6 + 0.5) = 1, 3 -> [0, 0, 1, 3].
  x = {0, 0.4f, 0.6f, 3};
  CHECK(dq(ref::quant_uniform(x.data(), 1, 4, 2, QuantAxis::token, 4)) == std::vector<float>{0, 0, 1, 3});
  // Constant block: scale 0, every element decodes to min exactly. All-zero: zeros.
  x = {5, 5, 5, 5};
  CHECK(dq(ref::quant_uniform(x.data(), 1, 4, 2, QuantAxis::token, 4)) == x);
  x = {0, 0, 0, 0};
  CHECK(dq(ref::quant_uniform(x.data(), 1, 4, 8, QuantAxis::token, 4)) == x);
}

TEST_CASE("uniform per-channel vs per-token on 4 tokens x 2 channels") {
  // channel 0 = [0, 1, 2, 3], channel 1 = [10, 10, 10, 16]
  std::vector<float> x = {0, 10, 1, 10, 2, 10, 3, 16};
  // axis = channel, group 4 tokens, 2 bits: channel 0 scale 1 -> exact; channel 1 min 10,
  // scale (16-10)/3 = 2 -> codes [0,0,0,3] -> exact.
  CHECK(dq(ref::quant_uniform(x.data(), 4, 2, 2, QuantAxis::channel, 4)) == x);
  // axis = token, group 2 channels, 4 bits: token 0 = [0, 10]: min 0, scale 10/15 -> fp16
  // 0.66650390625 (spacing 2^-11 in [0.5,1): 1365 * 2^-11); 10 -> code floor(10/0.6665039 + 0.5)
  // = floor(15.504) = 15 -> 15 * 0.66650390625 = 9.99755859375. Token 3 = [3, 16]: scale 13/15 ->
  // fp16 0.86669921875 (1775 * 2^-11); 16 -> code floor(14.9994 + 0.5) = 15 -> 3 + 13.00048828125.
  auto y = dq(ref::quant_uniform(x.data(), 4, 2, 4, QuantAxis::token, 2));
  CHECK(y[0] == 0.0f);
  CHECK(y[1] == 9.99755859375f);
  CHECK(y[6] == 3.0f);
  CHECK(y[7] == 16.00048828125f);
}

TEST_CASE("uniform: an outlier channel hurts per-token quantization more than per-channel (seed 3)") {
  const int64_t T = 64, D = 32;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(T * D));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) x[static_cast<size_t>(t * D + d)] = nd(rng) + (d == 5 ? 20.0f : 0.0f);
  const double e_tok = rel_err(x, dq(ref::quant_uniform(x.data(), T, D, 4, QuantAxis::token, 32)));
  const double e_ch = rel_err(x, dq(ref::quant_uniform(x.data(), T, D, 4, QuantAxis::channel, 32)));
  MESSAGE("4-bit relative error: per-token " << e_tok << ", per-channel " << e_ch);
  CHECK(e_ch < 0.5 * e_tok);
  // Error shrinks with more bits.
  const double e2 = rel_err(x, dq(ref::quant_uniform(x.data(), T, D, 2, QuantAxis::channel, 32)));
  const double e8 = rel_err(x, dq(ref::quant_uniform(x.data(), T, D, 8, QuantAxis::channel, 32)));
  CHECK(e8 < e_ch);
  CHECK(e_ch < e2);
}

TEST_CASE("nf4: table, hand case, constant and zero blocks") {
  for (int i = 0; i < 16; ++i) CHECK(kNf4Values[i] == static_cast<float>(kNf4Paper[i]));
  // absmax 1: 1 -> code 15, -1 -> code 0, 0.5 -> nearest of 0.4407 (d 0.0593) and 0.5626 (d 0.0626)
  // is 0.4407 (code 12), 0 -> code 7.
  std::vector<float> x = {1, -1, 0.5f, 0};
  auto q = ref::quant_nf4(x.data(), 1, 4, QuantAxis::token, 4, false);
  auto y = dq(q);
  CHECK(y[0] == 1.0f);
  CHECK(y[1] == -1.0f);
  CHECK(y[2] == static_cast<float>(kNf4Paper[12]));
  CHECK(y[3] == 0.0f);
  CHECK(q.codes[0] == (15 | 0 << 4));
  CHECK(q.codes[1] == (12 | 7 << 4));
  // Scaled by absmax 4: 2 -> 0.5 * 4 -> 0.4407 * 4.
  x = {4, -4, 2, 0};
  y = dq(ref::quant_nf4(x.data(), 1, 4, QuantAxis::token, 4, false));
  CHECK(y[2] == static_cast<float>(kNf4Paper[12]) * 4.0f);
  x = {-3, -3, -3, -3};  // constant: absmax 3, all -1 * 3
  CHECK(dq(ref::quant_nf4(x.data(), 2, 2, QuantAxis::token, 4, false)) == x);
  x = {0, 0, 0, 0};
  CHECK(dq(ref::quant_nf4(x.data(), 2, 2, QuantAxis::channel, 4, false)) == x);
}

TEST_CASE("nf4 double quantization: hand case and bits per element") {
  // Two blocks with absmax 1 and 3: mean 2, centred -1 and +1, scale 1/127, codes -127 and 127:
  // the absmax values decode to 1 and 3 (up to float rounding of 127 * (1/127)).
  std::vector<float> x = {1, 0, 0, 0, 3, 0, 0, 0};
  auto q = ref::quant_nf4(x.data(), 2, 4, QuantAxis::token, 4, true);
  REQUIRE(q.absmax_q.size() == 2);
  CHECK(q.absmax_q[0] == -127);
  CHECK(q.absmax_q[1] == 127);
  CHECK(q.dq_mean == 2.0f);
  auto y = dq(q);
  CHECK(y[0] == doctest::Approx(1.0).epsilon(1e-6));
  CHECK(y[4] == doctest::Approx(3.0).epsilon(1e-6));
  // Bits per element (design.md §5): nf4 4 + 32/64 = 4.5; with double quant 4 + 8/64 + 32/(64*256)
  // = 4.12695 plus one fp32 mean per tile; kivi-style 2-bit with group 32: 2 + 32/32 = 3.
  const int64_t n = 64 * 256 * 100;
  CHECK(static_cast<double>(nf4_bytes(n, 64, false)) * 8 / n == doctest::Approx(4.5));
  CHECK(static_cast<double>(nf4_bytes(n, 64, true)) * 8 / n == doctest::Approx(4.12695).epsilon(1e-4));
  CHECK(static_cast<double>(uniform_bytes(n, 2, 32)) * 8 / n == doctest::Approx(3.0));
  CHECK(static_cast<double>(uniform_bytes(n, 4, 64)) * 8 / n == doctest::Approx(4.5));
}

TEST_CASE("quantization bad input: one-line errors naming the values") {
  std::vector<float> x(24, 1.0f);
  CHECK_THROWS_WITH_AS(ref::quant_uniform(x.data(), 3, 8, 3, QuantAxis::token, 4),
                       "quantization bits = 3 (choose 2, 4 or 8)", UsageError);
  CHECK_THROWS_WITH_AS(ref::quant_uniform(x.data(), 3, 8, 4, QuantAxis::token, 6),
                       "quantization group = 6 does not divide D = 8 (axis = token)", UsageError);
  CHECK_THROWS_AS(ref::quant_uniform(x.data(), 3, 8, 4, QuantAxis::channel, 2), UsageError);  // 3 tokens
  CHECK_THROWS_AS(ref::quant_uniform(x.data(), 3, 8, 2, QuantAxis::token, 2), UsageError);    // 4 bits per block
  CHECK_THROWS_AS(ref::quant_uniform(x.data(), 3, 8, 4, QuantAxis::token, 0), UsageError);
  CHECK_THROWS_AS(ref::quant_nf4(x.data(), 3, 8, QuantAxis::token, 64, false), UsageError);
}

TEST_CASE("nf4: the cores' table holds the paper's values, and each midpoint is the float nearest the exact one") {
  core::Nf4Table tab;
  core::nf4_table_init(&tab);
  for (int i = 0; i < 16; ++i) CHECK(tab.values[i] == static_cast<float>(kNf4Paper[i]));
  for (int i = 0; i < 15; ++i) {
    // The exact midpoint of two floats is a double; its float rounding is off by at most half an ulp.
    const double exact = 0.5 * (static_cast<double>(tab.values[i]) + tab.values[i + 1]);
    INFO("midpoint " << i << " = " << tab.mids[i] << ", exact " << exact);
    CHECK(tab.values[i] < tab.mids[i]);
    CHECK(tab.mids[i] < tab.values[i + 1]);
    CHECK(std::fabs(tab.mids[i] - exact) <= 0.5 * std::ldexp(1.0, std::ilogb(exact) - 23));
  }
}

TEST_CASE("ref: empty tiles quantize to empty containers") {
  auto q = ref::quant_uniform(nullptr, 0, 64, 4, QuantAxis::token, 32);
  CHECK(q.codes.empty());
  CHECK(q.scale_f16.empty());
  CHECK(q.min_f16.empty());
  auto n = ref::quant_nf4(nullptr, 0, 64, QuantAxis::token, 64, true);
  CHECK(n.codes.empty());
  CHECK(n.absmax_q.empty());
  CHECK(n.dq_scale.empty());
  CHECK(n.dq_mean == 0.0f);
}

TEST_CASE("direct: ref uniform quantization equals the direct implementation bit for bit on the kernel case list") {
  // Expected values: tests/quant_direct.h (fp16 by _Float16, codes element by element, the packed
  // layout rebuilt from sim/kernels/quant.h). The formats fix every float operation, so exact.
  const auto cases = test::uniform_cases();
  MESSAGE(cases.size() << " uniform cases");
  for (const test::UCase& c : cases) {
    INFO(test::describe(c));
    const auto x = test::make_data(c.data, c.T, c.D, c.seed, c.bits);
    const test::direct::Uniform want = test::direct::uniform(x.data(), c.T, c.D, c.bits, c.axis, c.group);
    const UniformQuantized got = ref::quant_uniform(x.data(), c.T, c.D, c.bits, c.axis, c.group);
    test::check_same_bits(got.min_f16, want.min_f16, "fp16 min");
    test::check_same_bits(got.scale_f16, want.scale_f16, "fp16 scale");
    test::check_same_bits(got.codes, want.packed, "packed codes");
    std::vector<float> y(x.size(), NAN);
    ref::dequant_uniform(got, y.data());
    test::check_same_bits(y, want.decoded, "decoded");
  }
}

TEST_CASE("direct: ref nf4 quantization equals the direct nearest-value search on the kernel case list") {
  // Expected values: tests/quant_direct.h (absmax, double quantization and codes from their
  // definitions, the nearest of the paper's 16 values to x / absmax in double, ties to the lower
  // index). Declared tolerance, codes only: ref compares x * (1 / absmax) in float with the
  // midpoints rounded to float, each within a float ulp of the exact values, so where v lies within
  // 2^-22 |m| of a midpoint m (but not on it) either neighbour passes; exactly on a midpoint, the
  // lower index. Everything else is exact, and ref's decoded values are checked against
  // value[ref's code] * scale.
  const double band = std::ldexp(1.0, -22);
  int64_t in_band = 0, in_band_not_ties = 0;
  const auto cases = test::nf4_cases();
  MESSAGE(cases.size() << " nf4 cases");
  for (const test::NCase& c : cases) {
    INFO(test::describe(c));
    const auto x = test::make_data(c.data, c.T, c.D, c.seed, 0);
    const test::direct::Nf4 want = test::direct::nf4(x.data(), c.T, c.D, c.axis, c.block, c.dq);
    const Nf4Quantized got = ref::quant_nf4(x.data(), c.T, c.D, c.axis, c.block, c.dq);
    test::check_same_bits(got.absmax, want.absmax, "absmax");
    test::check_same_bits(got.absmax_q, want.absmax_q, "double-quantized absmax");
    test::check_same_bits(got.dq_scale, want.dq_scale, "double-quantization scales");
    test::check_same_bits(got.dq_mean, want.dq_mean, "double-quantization mean");
    const int64_t n = c.T * c.D;
    std::vector<float> y(x.size(), NAN), y_want(x.size());
    ref::dequant_nf4(got, y.data());
    int64_t bad = 0;
    for (int64_t e = 0; e < n; ++e) {
      const uint32_t code = (got.codes[e / 2] >> ((e % 2) * 4)) & 0xfu, code_want = want.code[e];
      y_want[test::direct::nf4_at(e, c.T, c.D, c.axis)] = static_cast<float>(kNf4Paper[code]) * want.scale[e / c.block];
      if (code == code_want) continue;
      uint32_t lower = 0;
      const double dist = test::direct::nf4_midpoint_distance(want.v[e], &lower);
      const bool neighbours = std::min(code, code_want) == lower && std::max(code, code_want) == lower + 1;
      if (dist > 0 && dist <= band && neighbours) {
        ++in_band, in_band_not_ties += c.data != test::QuantData::ties;
        continue;
      }
      if (bad++ == 0)
        FAIL_CHECK("element " << e << " of the block order: x / absmax = " << want.v[e] << ", ref code " << code
                              << ", direct code " << code_want << " (" << dist << " |m| from midpoint " << lower << "|"
                              << lower + 1 << ")");
    }
    CHECK(bad == 0);
    test::check_same_bits(y, y_want, "decoded (value of ref's code times the block's scale)");
  }
  MESSAGE(in_band << " codes within float rounding of a midpoint took the other neighbour (" << in_band_not_ties
                  << " outside the ties data)");
}
