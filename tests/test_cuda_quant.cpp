// CUDA quantization kernels (cuda/quant.h) against sim/ref. Every expected value here comes from
// kvsim::ref, and is compared bit for bit: packed codes, fp16 min and scale, absmax, the
// double-quantization state and the decoded floats (as bit patterns, so -0.0 against 0.0 counts
// as a difference). ref runs the kernels' own work items (sim/kernels/quant_core.h) serially in
// the kernels' order, so what only the GPU can get wrong is the launch: the mapping of items to
// threads, the copies, the device's compilation of the items. ref itself is checked against a
// direct implementation on the same case list in tests/test_quant.cpp.
//   "cuda-host: ..."  the items' mapping to code bytes, on any machine.
//   "cuda: ..."       the kernels on a GPU; without one they print "skipped: no CUDA device (...)",
//                     which ctest reports as skipped.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cuda/quant.h"
#include "sim/base/error.h"
#include "sim/kernels/quant.h"
#include "sim/kernels/quant_common.h"
#include "sim/kernels/quant_core.h"
#include "tests/cuda_test_util.h"
#include "tests/quant_cases.h"

using namespace kvsim;
using namespace kvsim::test;

namespace {

// A backend under test, with kvsim::ref's signatures.
struct Impl {
  UniformQuantized (*quant_uniform)(const float*, int64_t, int64_t, int, QuantAxis, int64_t);
  void (*dequant_uniform)(const UniformQuantized&, float*);
  Nf4Quantized (*quant_nf4)(const float*, int64_t, int64_t, QuantAxis, int64_t, bool);
  void (*dequant_nf4)(const Nf4Quantized&, float*);
};

const Impl kCuda{cuda::quant_uniform, cuda::dequant_uniform, cuda::quant_nf4, cuda::dequant_nf4};

void run_uniform_cases(const Impl& impl) {
  const auto cases = uniform_cases();
  MESSAGE(cases.size() << " uniform cases");
  for (const UCase& c : cases) {
    INFO(describe(c));
    const auto x = make_data(c.data, c.T, c.D, c.seed, c.bits);
    const UniformQuantized want = ref::quant_uniform(x.data(), c.T, c.D, c.bits, c.axis, c.group);
    const UniformQuantized got = impl.quant_uniform(x.data(), c.T, c.D, c.bits, c.axis, c.group);
    CHECK(got.bits == want.bits);
    CHECK(got.axis == want.axis);
    CHECK(got.group == want.group);
    CHECK(got.n_t == want.n_t);
    CHECK(got.D == want.D);
    check_same_bits(got.codes, want.codes, "codes");
    check_same_bits(got.min_f16, want.min_f16, "fp16 min");
    check_same_bits(got.scale_f16, want.scale_f16, "fp16 scale");
    // The decoder on ref's own codes, so a decoding fault is not masked by an encoding fault.
    std::vector<float> y_want(x.size()), y_got(x.size(), NAN);
    ref::dequant_uniform(want, y_want.data());
    impl.dequant_uniform(want, y_got.data());
    check_same_bits(y_got, y_want, "decoded");
  }
}

void run_nf4_cases(const Impl& impl) {
  const auto cases = nf4_cases();
  MESSAGE(cases.size() << " nf4 cases");
  for (const NCase& c : cases) {
    INFO(describe(c));
    const auto x = make_data(c.data, c.T, c.D, c.seed, 0);
    const Nf4Quantized want = ref::quant_nf4(x.data(), c.T, c.D, c.axis, c.block, c.dq);
    const Nf4Quantized got = impl.quant_nf4(x.data(), c.T, c.D, c.axis, c.block, c.dq);
    CHECK(got.axis == want.axis);
    CHECK(got.block == want.block);
    CHECK(got.n_t == want.n_t);
    CHECK(got.D == want.D);
    CHECK(got.double_quant == want.double_quant);
    check_same_bits(got.codes, want.codes, "codes");
    check_same_bits(got.absmax, want.absmax, "absmax");
    check_same_bits(got.absmax_q, want.absmax_q, "double-quantized absmax");
    check_same_bits(got.dq_scale, want.dq_scale, "double-quantization scales");
    check_same_bits(got.dq_mean, want.dq_mean, "double-quantization mean");
    std::vector<float> y_want(x.size()), y_got(x.size(), NAN);
    ref::dequant_nf4(want, y_want.data());
    impl.dequant_nf4(want, y_got.data());
    check_same_bits(y_got, y_want, "decoded");
  }
}

}  // namespace

TEST_CASE("cuda-host: code-byte items cover every byte once (no two threads write one byte)") {
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

TEST_CASE("cuda: uniform quantization kernels equal ref bit for bit") {
  if (!test::cuda_device_or_skip()) return;
  run_uniform_cases(kCuda);
}

TEST_CASE("cuda: nf4 quantization kernels equal ref bit for bit") {
  if (!test::cuda_device_or_skip()) return;
  run_nf4_cases(kCuda);
}

TEST_CASE("cuda: empty tiles and bad arguments behave as in ref") {
  if (!test::cuda_device_or_skip()) return;
  auto q = cuda::quant_uniform(nullptr, 0, 64, 4, QuantAxis::token, 32);
  CHECK(q.codes.empty());
  auto n = cuda::quant_nf4(nullptr, 0, 64, QuantAxis::token, 64, true);
  CHECK(n.codes.empty());
  CHECK(n.dq_mean == 0.0f);
  std::vector<float> x(24, 1.0f);
  CHECK_THROWS_WITH_AS(cuda::quant_uniform(x.data(), 3, 8, 3, QuantAxis::token, 4),
                       "quantization bits = 3 (choose 2, 4 or 8)", UsageError);
  CHECK_THROWS_AS(cuda::quant_nf4(x.data(), 3, 8, QuantAxis::token, 64, false), UsageError);
}

#if !defined(KVSIM_HAVE_CUDA)
TEST_CASE("cuda-stub: quantization without CUDA throws NotCompiled") {
  std::vector<float> x(64, 1.0f);
  CHECK_THROWS_WITH_AS(cuda::quant_uniform(x.data(), 1, 64, 4, QuantAxis::token, 32), "built without CUDA", NotCompiled);
  CHECK_THROWS_AS(cuda::quant_nf4(x.data(), 1, 64, QuantAxis::token, 64, false), NotCompiled);
  CHECK_THROWS_AS(cuda::dequant_uniform(UniformQuantized{}, x.data()), NotCompiled);
  CHECK_THROWS_AS(cuda::dequant_nf4(Nf4Quantized{}, x.data()), NotCompiled);
  CHECK_THROWS_AS(cuda::quant_uniform_device(nullptr, 0, 0, 4, QuantAxis::token, 32, {}, nullptr), NotCompiled);
}
#endif
