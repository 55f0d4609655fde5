// Built instead of cuda/attn_stats.cu when KVSIM_CUDA is off.
#include "sim/base/error.h"
#include "sim/kernels/attn_stats.h"

namespace kvsim::cuda {

void attn_stats(const float*, const float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*, double*,
                float*, int32_t*, float*) {
  throw NotCompiled("built without CUDA");
}

void prompt_colsums(const float*, const float*, const double*, int64_t, int64_t, int64_t, int64_t, int64_t, float*) {
  throw NotCompiled("built without CUDA");
}

}  // namespace kvsim::cuda
