// The backend-equivalence harness (style.md, design.md §8): one list of cases per kernel family,
// and every case run on every target against kvsim::ref, the ground truth:
//   omp        kernels(Backend::omp). Built without OpenMP the same code runs on one thread: the
//              arithmetic under test (summation order, vectorised exp, blocking) is unchanged, so
//              these cases run there too rather than skip.
//   cuda-host  the CUDA kernels' arithmetic in their thread mapping, emulated on the host
//              (tests/cuda_emulation.h, tests/cuda_forward_test_util.h; quantization has none: ref runs the kernels'
//              items): what the GPU computes, checked on any machine.
//   cuda       kernels(Backend::cuda) on the device; "no CUDA device" is reported as a skip.
// The families: tests/test_backend_stats.cpp (attention statistics), test_backend_attend.cpp
// (compressed attention and the kept sets it drives), test_backend_quant.cpp (quantization),
// test_backend_forward.cpp (forward-pass ops). KVSIM_BACKEND_TEST_CASES declares one doctest case
// per target ("omp: ...", "cuda-host: ...", "cuda: ..."), so `-tc='cuda*'` selects the GPU's.
//
// One tolerance type, Tol, declared with the case: |x - ref| <= atol + rtol |ref| for every
// element, or bit for bit (kBitExact: -0.0 against 0.0 and integer codes count). On failure the
// check names the worst element (or the first differing one), its index and the threshold.
// KVSIM_TEST_TOLERANCES=1 in the environment also prints the largest deviation of every passing
// comparison: the numbers a declared tolerance rests on.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "sim/kernels/kernels.h"
#include "tests/skip.h"

namespace kvsim::test {

struct Tol {
  double atol = 0, rtol = 0;
  bool bits = false;  // compare bit patterns instead
};
inline constexpr Tol kBitExact{0, 0, true};

namespace detail {
template <class T>
std::string show(T x) {
  std::ostringstream s;
  if constexpr (std::is_floating_point_v<T>)
    s << std::setprecision(std::numeric_limits<T>::max_digits10) << x;
  else
    s << +x;
  return s.str();
}
}  // namespace detail

template <class T>
void check_close(const char* what_c, const T* got, const T* want, size_t n, Tol tol) {
  const std::string what = what_c;  // doctest prints a const char* as a pointer
  if (tol.bits) {
    if (n == 0 || std::memcmp(got, want, n * sizeof(T)) == 0) return;
    size_t first = n, n_diff = 0;
    for (size_t i = 0; i < n; ++i)
      if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0) {
        if (first == n) first = i;
        ++n_diff;
      }
    FAIL_CHECK(what << ": " << n_diff << " of " << n << " elements differ bit for bit; first at index " << first
                    << ": got " << detail::show(got[first]) << ", ref " << detail::show(want[first]));
    return;
  }
  size_t worst = n, n_bad = 0;
  double worst_excess = -std::numeric_limits<double>::infinity(), max_abs = 0, max_rel = 0;
  for (size_t i = 0; i < n; ++i) {
    const double g = static_cast<double>(got[i]), w = static_cast<double>(want[i]);
    if (std::memcmp(&got[i], &want[i], sizeof(T)) == 0) continue;  // equal, also inf == inf
    const double d = std::fabs(g - w);
    double excess = d - (tol.atol + tol.rtol * std::fabs(w));
    if (!std::isfinite(excess)) excess = std::numeric_limits<double>::infinity();  // NaN or inf on one side
    if (excess > 0) ++n_bad;
    if (excess > worst_excess) worst_excess = excess, worst = i;
    max_abs = std::max(max_abs, d);
    if (w != 0) max_rel = std::max(max_rel, d / std::fabs(w));
  }
  if (n_bad) {
    const double w = static_cast<double>(want[worst]);
    FAIL_CHECK(what << ": " << n_bad << " of " << n
                    << " elements outside |x - ref| <= atol + rtol |ref|; worst at index " << worst << ": got "
                    << detail::show(got[worst]) << ", ref " << detail::show(want[worst]) << ", |diff| "
                    << std::fabs(static_cast<double>(got[worst]) - w) << " > threshold "
                    << tol.atol + tol.rtol * std::fabs(w) << " (atol " << tol.atol << ", rtol " << tol.rtol << ")");
  } else if (std::getenv("KVSIM_TEST_TOLERANCES")) {
    MESSAGE(what << ": max |diff| " << max_abs << ", max rel " << max_rel << " (atol " << tol.atol << ", rtol "
                 << tol.rtol << ")");
  }
}

template <class T>
void check_close(const char* what, const std::vector<T>& got, const std::vector<T>& want, Tol tol) {
  if (got.size() != want.size()) {
    FAIL_CHECK(std::string(what) << ": " << got.size() << " elements, ref has " << want.size());
    return;
  }
  check_close(what, got.data(), want.data(), got.size(), tol);
}

// ---- targets ----------------------------------------------------------------------------------

enum class Target { omp, cuda_host, cuda };

inline const char* target_name(Target t) {
  switch (t) {
    case Target::omp: return "omp";
    case Target::cuda_host: return "cuda-host";
    case Target::cuda: return "cuda";
  }
  return "?";
}

// A tolerance per target, for cases whose targets differ in arithmetic (the forward ops' trees).
struct TargetTol {
  Tol omp, cuda_host, cuda;
  Tol operator[](Target t) const { return t == Target::omp ? omp : t == Target::cuda_host ? cuda_host : cuda; }
};

// The kernel table a target runs (tests/backend_harness.cpp). An entry is null where the target
// has no kernel of its own to compare: omp's softmax and argmax are ref's (a comparison could not
// fail), the GPU has no softmax kernel, and cuBLAS's SGEMM has no host emulation.
const Kernels& target_kernels(Target t);

}  // namespace kvsim::test

// One doctest case per target running fn(Target): every case of a family on every target. The
// cuda case reports itself skipped (tests/skip.h) where no device can run it.
#define KVSIM_BACKEND_TEST_CASES(title, fn)                                \
  TEST_CASE("omp: " title) {                                               \
    if (!::kvsim::backend_available(::kvsim::Backend::omp))                \
      MESSAGE("built without OpenMP: omp's kernels run on one thread");    \
    fn(::kvsim::test::Target::omp);                                        \
  }                                                                        \
  TEST_CASE("cuda-host: " title) { fn(::kvsim::test::Target::cuda_host); } \
  TEST_CASE("cuda: " title) {                                              \
    KVSIM_REQUIRE_CUDA_DEVICE();                                           \
    fn(::kvsim::test::Target::cuda);                                       \
  }

// The same for a family without a host emulation of its own (quantization: ref runs the kernels'
// work items serially, so the emulation would be ref): omp and the device only.
#define KVSIM_BACKEND_TEST_CASES_NO_HOST(title, fn)                     \
  TEST_CASE("omp: " title) {                                            \
    if (!::kvsim::backend_available(::kvsim::Backend::omp))             \
      MESSAGE("built without OpenMP: omp's kernels run on one thread"); \
    fn(::kvsim::test::Target::omp);                                     \
  }                                                                     \
  TEST_CASE("cuda: " title) {                                           \
    KVSIM_REQUIRE_CUDA_DEVICE();                                        \
    fn(::kvsim::test::Target::cuda);                                    \
  }
