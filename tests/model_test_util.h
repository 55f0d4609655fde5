// Shared helpers for tests/test_model_*.cpp: where the real weights live (their skip is
// KVSIM_REQUIRE_MODELS, tests/skip.h), and the harness's tolerance check in the form these tests
// call it.
#pragma once

#include <cstdint>
#include <string>

#include "tests/backend_harness.h"
#include "tests/skip.h"

namespace kvsim_test {

inline std::string models_dir() { return kvsim::test::models_dir(); }
inline std::string stories_bin() { return models_dir() + "/stories260K/stories260K.bin"; }
inline std::string stories_tok() { return models_dir() + "/stories260K/tok512.bin"; }

// |x - ref| <= atol + rtol * |ref| everywhere (kvsim::test::check_close); on failure reports the worst element.
inline void check_close(const float* x, const float* ref, int64_t n, double atol, double rtol, const char* what) {
  kvsim::test::check_close(what, x, ref, static_cast<size_t>(n), kvsim::test::Tol{atol, rtol});
}

}  // namespace kvsim_test
