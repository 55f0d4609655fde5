// Shared helpers for tests/test_model_*.cpp: where the real weights live, and tolerance checks
// that print the worst element.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>

namespace kvsim_test {

inline std::string models_dir() { return KVSIM_SOURCE_DIR "/../shared/models"; }
inline std::string stories_bin() { return models_dir() + "/stories260K/stories260K.bin"; }
inline std::string stories_tok() { return models_dir() + "/stories260K/tok512.bin"; }
inline bool have_models() { return std::filesystem::exists(stories_bin()); }

// |x - ref| <= atol + rtol * |ref| everywhere; on failure reports the worst element.
inline void check_close(const float* x, const float* ref, int64_t n, double atol, double rtol, const char* what) {
  int64_t worst = -1;
  double worst_excess = 0, max_abs = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = std::abs(static_cast<double>(x[i]) - ref[i]);
    max_abs = std::max(max_abs, d);
    const double excess = d - (atol + rtol * std::abs(static_cast<double>(ref[i])));
    if (excess > worst_excess || !std::isfinite(d)) {
      worst_excess = std::isfinite(d) ? excess : 1e30;
      worst = i;
    }
  }
  INFO(what << ": max |diff| = " << max_abs);
  if (worst >= 0)
    FAIL_CHECK(what << ": element " << worst << " = " << x[worst] << " vs reference " << ref[worst]
                    << " exceeds atol " << atol << " + rtol " << rtol);
}

}  // namespace kvsim_test

#define KVSIM_REQUIRE_MODELS()                                                    \
  do {                                                                            \
    if (!kvsim_test::have_models()) {                                             \
      MESSAGE("skipped: ../shared/models not found (" << kvsim_test::models_dir() << ")"); \
      return;                                                                     \
    }                                                                             \
  } while (0)
