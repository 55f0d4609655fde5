// Quantization kernels of ref (sim/kernels/quant.h) on hand cases. Expected values are computed by hand
// in the comments, or from the NormalFloat-4 table as printed in the QLoRA paper (Appendix E),
// copied here independently of the kernel's table. omp and cuda against ref: tests/test_backend_quant.cpp.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "sim/base/error.h"
#include "sim/kernels/quant.h"
#include "sim/kernels/quant.h"

using namespace kvsim;

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

const double kNf4Paper[16] = {-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                              -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                              0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                              0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0};

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
  CHECK_THROWS_WITH_AS(ref::quant_uniform(x.data(), 3, 8, 3, QuantAxis::token, 4), "quantization bits = 3 (choose 2, 4 or 8)", UsageError);
  CHECK_THROWS_WITH_AS(ref::quant_uniform(x.data(), 3, 8, 4, QuantAxis::token, 6),
                       "quantization group = 6 does not divide D = 8 (axis = token)", UsageError);
  CHECK_THROWS_AS(ref::quant_uniform(x.data(), 3, 8, 4, QuantAxis::channel, 2), UsageError);  // 3 tokens
  CHECK_THROWS_AS(ref::quant_uniform(x.data(), 3, 8, 2, QuantAxis::token, 2), UsageError);    // 4 bits per block
  CHECK_THROWS_AS(ref::quant_uniform(x.data(), 3, 8, 4, QuantAxis::token, 0), UsageError);
  CHECK_THROWS_AS(ref::quant_nf4(x.data(), 3, 8, QuantAxis::token, 64, false), UsageError);
}
