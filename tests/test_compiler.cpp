// The compiler builds constants right under the project's flags. GCC 12.2 with AVX-512 (-march=native
// on an AVX-512 machine) emits a vector of 64-bit elements equal but for trailing zeros as a broadcast
// of the first (std::vector<double>{1, 1, 1, 0} holds {1, 1, 1, 1}); CMakeLists.txt probes for it
// (cmake/check_vector_constants.cpp) and adds a workaround flag. This test fails if a build gets
// past the probe with the miscompile (the same constants, compiled with the suite's own flags).
#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

namespace {
#define KVSIM_CONST_VEC(name, T, ...) \
  __attribute__((noinline)) std::vector<T> name() { return std::vector<T>{__VA_ARGS__}; }
KVSIM_CONST_VEC(d4, double, 1, 1, 1, 0)
KVSIM_CONST_VEC(d4b, double, 1, 1, 0, 0)
KVSIM_CONST_VEC(d8, double, 1, 1, 1, 1, 1, 1, 1, 0)
KVSIM_CONST_VEC(i4, int64_t, 5, 5, 5, 0)
KVSIM_CONST_VEC(f8, float, 1, 1, 1, 1, 1, 1, 1, 0)
#undef KVSIM_CONST_VEC
}  // namespace

TEST_CASE("compiler: vector constants equal but for trailing zeros keep their zeros under the build's flags") {
  CHECK(d4() == std::vector<double>{1, 1, 1, 0});
  CHECK(d4()[3] == 0.0);
  CHECK(d4b()[2] == 0.0);
  CHECK(d4b()[3] == 0.0);
  CHECK(d8()[7] == 0.0);
  CHECK(i4()[3] == 0);
  CHECK(f8()[7] == 0.0f);
}
