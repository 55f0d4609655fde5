// Built instead of the .cu files when KVSIM_CUDA is off.
#include "cuda/device.h"
#include "sim/base/error.h"

namespace kvsim::cuda {

bool built_with_cuda() { return false; }
int device_count() { return 0; }
std::string device_error() { return "built without CUDA"; }
std::string device_name(int) { throw NotCompiled("built without CUDA"); }
void require_device() { throw NotCompiled("built without CUDA"); }
int select_device() { throw NotCompiled("built without CUDA"); }
double measured_peak_gflops(bool) { throw NotCompiled("built without CUDA"); }

}  // namespace kvsim::cuda
