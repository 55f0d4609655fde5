// CUDA quantization without CUDA: the stub. The kernels themselves are compared with ref bit for bit
// on the harness cases (tests/test_backend_quant.cpp, "cuda:" on a device). ref runs the kernels' own
// work items (sim/kernels/quant_core.h) serially in the kernels' order, so what only the GPU can get
// wrong is the launch: the mapping of items to threads, the copies, the device's compilation of the
// items; ref itself is checked against a direct implementation in tests/test_quant.cpp.
#include <doctest/doctest.h>

#include <vector>

#include "cuda/quant.h"
#include "sim/base/error.h"
#include "sim/kernels/quant.h"

using namespace kvsim;

#if !defined(KVSIM_HAVE_CUDA)
TEST_CASE("cuda-stub: quantization without CUDA throws NotCompiled") {
  std::vector<float> x(64, 1.0f);
  CHECK_THROWS_WITH_AS(cuda::quant_uniform(x.data(), 1, 64, 4, QuantAxis::token, 32), "built without CUDA",
                       NotCompiled);
  CHECK_THROWS_AS(cuda::quant_nf4(x.data(), 1, 64, QuantAxis::token, 64, false), NotCompiled);
  CHECK_THROWS_AS(cuda::dequant_uniform(UniformQuantized{}, x.data()), NotCompiled);
  CHECK_THROWS_AS(cuda::dequant_nf4(Nf4Quantized{}, x.data()), NotCompiled);
  CHECK_THROWS_AS(cuda::quant_uniform_device(nullptr, 0, 0, 4, QuantAxis::token, 32, {}, nullptr), NotCompiled);
}
#endif
