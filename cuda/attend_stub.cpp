// Built instead of cuda/attend.cu when KVSIM_CUDA is off (cuda/attend_batch.cpp, the packing, is
// built either way).
#include "cuda/attend.h"
#include "sim/base/error.h"

namespace kvsim::cuda {

void run_attend_batch(AttendBatch&) { throw NotCompiled("built without CUDA"); }

void attend_slots(const float*, int64_t, int64_t, int64_t, const SlotsView&, double*, float*, float*) {
  throw NotCompiled("built without CUDA");
}

}  // namespace kvsim::cuda
