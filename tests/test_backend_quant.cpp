// Quantization (sim/kernels/quant.h: quant_uniform, dequant_uniform, quant_nf4, dequant_nf4), the
// harness's family (tests/backend_harness.h): one case list, every case on omp, cuda-host and cuda
// against ref, bit for bit on every target: packed codes, fp16 min and scale, absmax, the
// double-quantization state and the decoded floats (as bit patterns, so -0.0 against 0.0 counts).
// The list holds the shapes, bits, axes and groups of the first ref/omp comparison, plus data
// built to break kernels: T in {1, 31, 33, 97, 4097}, constant and all-zero
// blocks with mixed signed zeros, outlier channels, values whose fp16 scale is subnormal or rounds
// to 0, values near the fp16 limit, and exact rounding ties (uniform: (x - min) / scale = k + 1/2;
// NF4: x / absmax exactly on a midpoint between two code values).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "sim/base/error.h"
#include "sim/kernels/quant.h"
#include "sim/kernels/quant_common.h"
#include "sim/kernels/quant_core.h"
#include "tests/backend_harness.h"
#include "tests/quant_cases.h"

using namespace kvsim;
using test::kBitExact;
using test::Target;

namespace {

// The case list of tests/quant_cases.h, shared with ref's direct checks (tests/test_quant.cpp).
using test::describe;
using test::make_data;
using test::NCase;
using test::nf4_cases;
using test::UCase;
using test::uniform_cases;

void run_uniform_cases(const Kernels& k) {
  const auto cases = uniform_cases();
  MESSAGE(cases.size() << " uniform cases");
  for (const UCase& c : cases) {
    INFO(describe(c));
    const auto x = make_data(c.data, c.T, c.D, c.seed, c.bits);
    const UniformQuantized want = ref::quant_uniform(x.data(), c.T, c.D, c.bits, c.axis, c.group);
    const UniformQuantized got = k.quant_uniform(x.data(), c.T, c.D, c.bits, c.axis, c.group);
    CHECK(got.bits == want.bits);
    CHECK(got.axis == want.axis);
    CHECK(got.group == want.group);
    CHECK(got.n_t == want.n_t);
    CHECK(got.D == want.D);
    test::check_close("codes", got.codes, want.codes, kBitExact);
    test::check_close("fp16 min", got.min_f16, want.min_f16, kBitExact);
    test::check_close("fp16 scale", got.scale_f16, want.scale_f16, kBitExact);
    // The decoder on ref's own codes, so a decoding fault is not masked by an encoding fault.
    std::vector<float> y_want(x.size()), y_got(x.size(), NAN);
    ref::dequant_uniform(want, y_want.data());
    k.dequant_uniform(want, y_got.data());
    test::check_close("decoded", y_got, y_want, kBitExact);
  }
}

void run_nf4_cases(const Kernels& k) {
  const auto cases = nf4_cases();
  MESSAGE(cases.size() << " nf4 cases");
  for (const NCase& c : cases) {
    INFO(describe(c));
    const auto x = make_data(c.data, c.T, c.D, c.seed, 0);
    const Nf4Quantized want = ref::quant_nf4(x.data(), c.T, c.D, c.axis, c.block, c.dq);
    const Nf4Quantized got = k.quant_nf4(x.data(), c.T, c.D, c.axis, c.block, c.dq);
    CHECK(got.axis == want.axis);
    CHECK(got.block == want.block);
    CHECK(got.n_t == want.n_t);
    CHECK(got.D == want.D);
    CHECK(got.double_quant == want.double_quant);
    test::check_close("codes", got.codes, want.codes, kBitExact);
    test::check_close("absmax", got.absmax, want.absmax, kBitExact);
    test::check_close("double-quantized absmax", got.absmax_q, want.absmax_q, kBitExact);
    test::check_close("double-quantization scales", got.dq_scale, want.dq_scale, kBitExact);
    test::check_close("double-quantization mean", &got.dq_mean, &want.dq_mean, 1, kBitExact);
    std::vector<float> y_want(x.size()), y_got(x.size(), NAN);
    ref::dequant_nf4(want, y_want.data());
    k.dequant_nf4(want, y_got.data());
    test::check_close("decoded", y_got, y_want, kBitExact);
  }
}

void check_uniform(Target t) { run_uniform_cases(test::target_kernels(t)); }
void check_nf4(Target t) { run_nf4_cases(test::target_kernels(t)); }

// Empty tiles give empty results, and bad arguments the UsageError ref throws, with ref's message.
void check_edges(Target t) {
  const Kernels& k = test::target_kernels(t);
  auto q = k.quant_uniform(nullptr, 0, 64, 4, QuantAxis::token, 32);
  CHECK(q.codes.empty());
  CHECK(q.scale_f16.empty());
  CHECK(q.min_f16.empty());
  auto n = k.quant_nf4(nullptr, 0, 64, QuantAxis::token, 64, true);
  CHECK(n.codes.empty());
  CHECK(n.absmax_q.empty());
  CHECK(n.dq_mean == 0.0f);
  std::vector<float> x(24, 1.0f);
  CHECK_THROWS_WITH_AS(k.quant_uniform(x.data(), 3, 8, 3, QuantAxis::token, 4),
                       "quantization bits = 3 (choose 2, 4 or 8)", UsageError);
  CHECK_THROWS_WITH_AS(k.quant_uniform(x.data(), 3, 8, 4, QuantAxis::token, 6),
                       "quantization group = 6 does not divide D = 8 (axis = token)", UsageError);
  CHECK_THROWS_AS(k.quant_uniform(x.data(), 3, 8, 4, QuantAxis::channel, 2), UsageError);  // 3 tokens
  CHECK_THROWS_AS(k.quant_uniform(x.data(), 3, 8, 2, QuantAxis::token, 2), UsageError);    // 4 bits per block
  CHECK_THROWS_AS(k.quant_uniform(x.data(), 3, 8, 4, QuantAxis::token, 0), UsageError);
  CHECK_THROWS_AS(k.quant_nf4(x.data(), 3, 8, QuantAxis::token, 64, false), UsageError);
}

}  // namespace

KVSIM_BACKEND_TEST_CASES_NO_HOST("uniform quantization equals ref bit for bit on the harness cases", check_uniform)
KVSIM_BACKEND_TEST_CASES_NO_HOST("nf4 quantization equals ref bit for bit on the harness cases", check_nf4)
KVSIM_BACKEND_TEST_CASES_NO_HOST("quantization of empty tiles and bad arguments behaves as ref", check_edges)

TEST_CASE("cuda-host: uniform code-byte items cover every byte once on the harness cases (no two threads write one byte)") {
  for (const UCase& c : uniform_cases()) {
    INFO(describe(c));
    const auto s = quant::uniform_shape(c.T, c.D, c.bits, c.axis, c.group);
    const int64_t n = core::uniform_code_bytes(s);
    std::vector<int> hits(static_cast<size_t>(n), 0);
    int64_t block = 0, outside = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t byte = core::uniform_codes_item_byte(s, i, &block);
      if (byte < 0 || byte >= n || byte / core::uniform_block_bytes(s) != block)
        ++outside;
      else
        ++hits[static_cast<size_t>(byte)];
    }
    CHECK(outside == 0);
    CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
  }
}
