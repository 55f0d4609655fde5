// Double- and single-precision vectors at the widest width the build targets (AVX-512: 8 and 16
// lanes, AVX2 with FMA: 4 and 8, otherwise 1), with explicit fused multiply-adds: the build compiles with
// -ffp-contract=off, so a plain a * b + c never becomes an FMA, and the kernels of sim/kernels/omp/ that want FMAs ask
// for them here. Each operation is the same rounding at every width (one FMA rounds once), so a
// kernel's result does not depend on the width.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace kvsim::omp {

// Keeps a loaded vector in a register: without it the compiler folds the load into every FMA that
// uses it, and a register block of R rows issues R loads of it instead of one (load-port bound).
template <class V>
inline void vpin(V& a) {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  asm("" : "+v"(a));
#else
  (void)a;
#endif
}

#if defined(__AVX512F__)
using VecF64 = __m512d;
inline constexpr int64_t kVecF64 = 8;
inline VecF64 vzero() { return _mm512_setzero_pd(); }
inline VecF64 vset1(double x) { return _mm512_set1_pd(x); }
inline VecF64 vload(const double* p) { return _mm512_loadu_pd(p); }
inline void vstore(double* p, VecF64 a) { _mm512_storeu_pd(p, a); }
inline VecF64 vfma(VecF64 a, VecF64 b, VecF64 c) { return _mm512_fmadd_pd(a, b, c); }
inline VecF64 vmul(VecF64 a, VecF64 b) { return _mm512_mul_pd(a, b); }
// The zero-masked forms: the plain ones pass _mm512_undefined_pd(), which GCC 12 reports as
// maybe-uninitialized under -Werror.
inline VecF64 vwiden(const float* p) { return _mm512_maskz_cvtps_pd(0xFF, _mm256_loadu_ps(p)); }
inline double vsum(VecF64 a) {
  const __m256d q = _mm256_add_pd(_mm512_maskz_extractf64x4_pd(0xF, a, 0), _mm512_maskz_extractf64x4_pd(0xF, a, 1));
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(q), _mm256_extractf128_pd(q, 1));
  return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}
using VecF32 = __m512;
inline constexpr int64_t kVecF32 = 16;
inline VecF32 vzero_f() { return _mm512_setzero_ps(); }
inline VecF32 vset1(float x) { return _mm512_set1_ps(x); }
inline VecF32 vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, VecF32 a) { _mm512_storeu_ps(p, a); }
inline VecF32 vfma(VecF32 a, VecF32 b, VecF32 c) { return _mm512_fmadd_ps(a, b, c); }
#elif defined(__AVX2__) && defined(__FMA__)
using VecF64 = __m256d;
inline constexpr int64_t kVecF64 = 4;
inline VecF64 vzero() { return _mm256_setzero_pd(); }
inline VecF64 vset1(double x) { return _mm256_set1_pd(x); }
inline VecF64 vload(const double* p) { return _mm256_loadu_pd(p); }
inline void vstore(double* p, VecF64 a) { _mm256_storeu_pd(p, a); }
inline VecF64 vfma(VecF64 a, VecF64 b, VecF64 c) { return _mm256_fmadd_pd(a, b, c); }
inline VecF64 vmul(VecF64 a, VecF64 b) { return _mm256_mul_pd(a, b); }
inline VecF64 vwiden(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
inline double vsum(VecF64 a) {
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
  return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}
using VecF32 = __m256;
inline constexpr int64_t kVecF32 = 8;
inline VecF32 vzero_f() { return _mm256_setzero_ps(); }
inline VecF32 vset1(float x) { return _mm256_set1_ps(x); }
inline VecF32 vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, VecF32 a) { _mm256_storeu_ps(p, a); }
inline VecF32 vfma(VecF32 a, VecF32 b, VecF32 c) { return _mm256_fmadd_ps(a, b, c); }
#else
using VecF64 = double;
inline constexpr int64_t kVecF64 = 1;
inline VecF64 vzero() { return 0.0; }
inline VecF64 vset1(double x) { return x; }
inline VecF64 vload(const double* p) { return *p; }
inline void vstore(double* p, VecF64 a) { *p = a; }
inline VecF64 vfma(VecF64 a, VecF64 b, VecF64 c) { return std::fma(a, b, c); }
inline VecF64 vmul(VecF64 a, VecF64 b) { return a * b; }
inline VecF64 vwiden(const float* p) { return *p; }
inline double vsum(VecF64 a) { return a; }
using VecF32 = float;
inline constexpr int64_t kVecF32 = 1;
inline VecF32 vzero_f() { return 0.0f; }
inline VecF32 vset1(float x) { return x; }
inline VecF32 vload(const float* p) { return *p; }
inline void vstore(float* p, VecF32 a) { *p = a; }
inline VecF32 vfma(VecF32 a, VecF32 b, VecF32 c) { return std::fma(a, b, c); }
#endif

}  // namespace kvsim::omp
