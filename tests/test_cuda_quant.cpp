// The CUDA quantization kernels' building blocks against sim/: fp16 conversion and the NF4 table
// of cuda/quant_core.h, and the stub without CUDA. The kernels themselves are compared with ref
// bit for bit on every target in tests/test_backend_quant.cpp (the harness, tests/backend_harness.h).
#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

#include "cuda/quant.h"
#include "cuda/quant_core.h"
#include "sim/base/error.h"
#include "sim/base/half.h"
#include "sim/kernels/quant_common.h"
#include "sim/kernels/quant.h"
#include "tests/backend_harness.h"

using namespace kvsim;

TEST_CASE("cuda-host: fp16 conversion equals sim/base/half.h on every half and a sweep of floats") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float want = f16_to_f32(static_cast<uint16_t>(h)), got = cuda::core::f16_to_f32(static_cast<uint16_t>(h));
    if (f32_bits(want) != f32_bits(got)) FAIL_CHECK("f16_to_f32(" << h << ")");
  }
  // Every float bit pattern with a stride coprime to 2^32 (all exponents, both signs, NaN, inf,
  // subnormals), plus the neighbours of each rounding boundary of the subnormal and normal paths.
  int64_t bad = 0;
  for (uint64_t u = 0; u < (uint64_t{1} << 32); u += 251)
    bad += f32_to_f16(bits_f32(static_cast<uint32_t>(u))) != cuda::core::f32_to_f16(bits_f32(static_cast<uint32_t>(u)));
  for (uint32_t h = 0; h < 0x7c00u; ++h)
    for (uint32_t sign : {0u, 0x8000u}) {
      const float mid = 0.5f * (f16_to_f32(static_cast<uint16_t>(h)) + f16_to_f32(static_cast<uint16_t>(h + 1)));
      for (int k = -1; k <= 1; ++k) {
        const float v = bits_f32((f32_bits(mid) + static_cast<uint32_t>(k)) | (sign << 16));
        bad += f32_to_f16(v) != cuda::core::f32_to_f16(v);
      }
    }
  CHECK(bad == 0);
}

TEST_CASE("cuda-host: NF4 table and midpoints equal sim/ref's") {
  cuda::core::Nf4Table tab;
  cuda::core::nf4_table_init(&tab);
  test::check_close("NF4 values", tab.values, kNf4Values, 16, test::kBitExact);
  test::check_close("NF4 midpoints", tab.mids, quant::nf4_midpoints(), 15, test::kBitExact);
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
