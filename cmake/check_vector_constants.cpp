// Configure-time probe (CMakeLists.txt, "vector constants"): GCC 12.2 with AVX-512 (-march=native on an
// AVX-512 machine) emits a vector of 64-bit elements whose elements are equal but for trailing zeros as
// a broadcast of the first: std::vector<double>{1, 1, 1, 0} holds {1, 1, 1, 1}. Exits 0 when every
// constant below survives the flags it is built with, 1 otherwise. tests/test_compiler.cpp repeats it.
#include <cstdint>
#include <vector>

#define KVSIM_PROBE(name, T, ...) \
  __attribute__((noinline)) std::vector<T> name() { return std::vector<T>{__VA_ARGS__}; }
KVSIM_PROBE(d4, double, 1, 1, 1, 0)
KVSIM_PROBE(d4b, double, 1, 1, 0, 0)
KVSIM_PROBE(d8, double, 1, 1, 1, 1, 1, 1, 1, 0)
KVSIM_PROBE(i4, int64_t, 5, 5, 5, 0)

int main() {
  const std::vector<double> a = d4(), b = d4b(), c = d8();
  const std::vector<int64_t> d = i4();
  return (a[3] == 0 && b[2] == 0 && b[3] == 0 && c[7] == 0 && d[3] == 0) ? 0 : 1;
}
