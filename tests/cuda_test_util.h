// GPU test cases: without a device (or without a CUDA build) they print "skipped: no CUDA device (...)"
// and return; ctest reports them as skipped (SKIP_REGULAR_EXPRESSION in tests/CMakeLists.txt), never
// as passed. The host emulation cases (tests/test_cuda_*.cpp, "cuda-host: ...") run everywhere.
#pragma once

#include <cstdio>
#include <string>

#include "sim/kernels/backend.h"

namespace kvsim::test {

// True when a CUDA device can run; otherwise prints the skip line the ctest property matches.
inline bool cuda_device_or_skip() {
  std::string why;
  if (backend_available(Backend::cuda, &why)) return true;
  std::printf("skipped: no CUDA device (%s)\n", why.c_str());
  return false;
}

}  // namespace kvsim::test
