// Functions compiled for both host and device. The arithmetic of each CUDA kernel lives in such
// functions (cuda/*_core.h), so the same source runs on the GPU and, in the test suite, on the CPU:
// machines without a GPU still check the kernels' math against sim/ref (tests/test_cuda_*.cpp).
#pragma once

#if defined(__CUDACC__)
#define KVSIM_HD __host__ __device__ inline
#else
#define KVSIM_HD inline
#endif
