// Built instead of cuda/quant.cu when KVSIM_CUDA is off: every call throws NotCompiled.
#include "cuda/quant.h"
#include "sim/base/error.h"

namespace kvsim::cuda {

namespace {
[[noreturn]] void not_compiled() { throw NotCompiled("built without CUDA"); }
}  // namespace

UniformQuantized quant_uniform(const float*, int64_t, int64_t, int, QuantAxis, int64_t) { not_compiled(); }
void dequant_uniform(const UniformQuantized&, float*) { not_compiled(); }
Nf4Quantized quant_nf4(const float*, int64_t, int64_t, QuantAxis, int64_t, bool) { not_compiled(); }
void dequant_nf4(const Nf4Quantized&, float*) { not_compiled(); }

void quant_uniform_device(const float*, int64_t, int64_t, int, QuantAxis, int64_t, UniformDevice, void*) {
  not_compiled();
}
void dequant_uniform_device(const UniformDevice&, int64_t, int64_t, int, QuantAxis, int64_t, float*, void*) {
  not_compiled();
}
void quant_nf4_device(const float*, int64_t, int64_t, QuantAxis, int64_t, bool, Nf4Device, void*) { not_compiled(); }
void dequant_nf4_device(const Nf4Device&, int64_t, int64_t, QuantAxis, int64_t, bool, float*, void*) { not_compiled(); }

}  // namespace kvsim::cuda
