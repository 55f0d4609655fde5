// The one way a test case says it cannot run here: a line "skipped: WHY" on stdout, which the
// SKIP_REGULAR_EXPRESSION of tests/CMakeLists.txt matches, so ctest reports the case as Skipped,
// never as Passed. Only this header spells that prefix (tests/CMakeLists.txt refuses a test source
// that does), so a case that runs never prints it by accident. The macros return from the test
// case at once: use them at the top of a TEST_CASE, before any check and outside any SUBCASE
// (doctest re-enters a case once per subcase, and ctest would call the whole case skipped).
// Reasons: ../shared/models missing, a backend not built (OpenMP, CUDA, MPI), no CUDA device.
#pragma once

#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>

#include "sim/kernels/backend.h"

namespace kvsim::test {

inline void print_skip_line(const std::string& why) {
  std::fflush(stdout);  // doctest writes through std::cout; keep the line whole and in order
  std::printf("skipped: %s\n", why.c_str());
  std::fflush(stdout);
}

// The real weights, beside the checkout (tools/scripts/gpu_run.sh links them on a GPU machine).
inline std::string models_dir() { return KVSIM_SOURCE_DIR "/../shared/models"; }
inline bool have_models() { return std::filesystem::exists(models_dir() + "/stories260K/stories260K.bin"); }

// Why backend b cannot run here ("" when it can). cuda keeps the wording that README.md, cuda/README.md
// and the benchmarks use: "no CUDA device (...)".
inline std::string backend_skip_reason(Backend b) {
  std::string why;
  if (backend_available(b, &why)) return "";
  return b == Backend::cuda ? "no CUDA device (" + why + ")" : why;
}

}  // namespace kvsim::test

// Prints "skipped: " followed by `why` (anything that streams) and returns from the test case.
#define KVSIM_SKIP(why)                                    \
  do {                                                     \
    std::ostringstream kvsim_skip_why_;                    \
    kvsim_skip_why_ << why;                                \
    ::kvsim::test::print_skip_line(kvsim_skip_why_.str()); \
    return;                                                \
  } while (0)

#define KVSIM_REQUIRE_MODELS()                                                          \
  do {                                                                                  \
    if (!::kvsim::test::have_models())                                                  \
      KVSIM_SKIP("../shared/models not found (" << ::kvsim::test::models_dir() << ")"); \
  } while (0)

// Skips unless backend b can run here; for cuda also selects the device (as require_backend does
// for the program) so that kernels called directly run on it.
#define KVSIM_REQUIRE_BACKEND(b)                                                  \
  do {                                                                            \
    const std::string kvsim_skip_reason_ = ::kvsim::test::backend_skip_reason(b); \
    if (!kvsim_skip_reason_.empty()) KVSIM_SKIP(kvsim_skip_reason_);              \
    ::kvsim::require_backend(b);                                                  \
  } while (0)

#define KVSIM_REQUIRE_CUDA_DEVICE() KVSIM_REQUIRE_BACKEND(::kvsim::Backend::cuda)
