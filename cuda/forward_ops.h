// CUDA twins of sim/kernels/ref/forward_ops.h (same names, same shapes, same semantics), on device
// pointers and a stream. matmul is cuBLAS SGEMM in FP32 (TF32 off); the other kernels map threads
// to rows, elements and slots and call the arithmetic in cuda/forward_core.h. A plain C++ header:
// no CUDA types, so traces/ and the tests include it in any build. Without CUDA every function
// throws NotCompiled("built without CUDA") (cuda/forward_stub.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "sim/base/rope.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*; nullptr is the default stream

namespace kvsim::cuda {

using StreamPtr = CUstream_st*;

// y = x W^T (+ b). All pointers on the device.
// Whether cuBLAS (opened on first use, not linked) can be loaded here; no GPU is needed to load it.
// Otherwise *why says what failed. False without CUDA.
bool cublas_loadable(std::string* why = nullptr);

void matmul(const float* x,  // [T, K]
            const float* w,  // [N, K]
            const float* b,  // [N] or nullptr
            float* y,        // [T, N]
            int64_t T, int64_t K, int64_t N, StreamPtr stream = nullptr);

// y = x / sqrt(mean(x^2) + eps) * g, per row (one block per row).
void rmsnorm(const float* x,  // [T, n]
             const float* g,  // [n]
             float* y,        // [T, n]
             int64_t T, int64_t n, float eps, StreamPtr stream = nullptr);

// RoPE on every head of every row, token t at position pos0 + t. inv_freq is on the device.
void rope(float* x,  // [T, n_heads, D]
          int64_t T, int64_t n_heads, int64_t D, int64_t pos0, double theta, RopeStyle style,
          const float* inv_freq,  // [D/2] or nullptr
          StreamPtr stream = nullptr);

// out = silu(gate) * up.
void swiglu(const float* gate, const float* up, float* out, int64_t n, StreamPtr stream = nullptr);

// Causal attention of T queries at positions pos0 .. pos0+T-1 over a device-resident cache of n
// slots per KV head; query head h reads KV head h / G (G = H / Hkv). Head g's slots start at
// k + g * head_stride. pos == nullptr: slot s is position s (a full cache); bias == nullptr: none.
// One block per (query, head) keeps the n logits in shared memory: n is limited by the device's
// shared memory (about 56k slots on A100/H100); beyond it, UsageError.
void attention(const float* q,      // [T, H, D]
               const float* k,      // [Hkv, head_stride / D, D], first n rows of each head used
               const float* v,      // same layout as k
               const float* bias,   // [Hkv, n] or nullptr
               const int64_t* pos,  // [Hkv, n] or nullptr
               float* o,            // [T, H, D]
               int64_t T, int64_t H, int64_t Hkv, int64_t D, int64_t n, int64_t head_stride, int64_t pos0,
               StreamPtr stream = nullptr);

// Index of the largest of x[0..n) (device); ties go to the lowest index. Synchronises the stream.
int64_t argmax(const float* x, int64_t n, StreamPtr stream = nullptr);

// x += y elementwise (the residual connections).
void add_inplace(float* x, const float* y, int64_t n, StreamPtr stream = nullptr);

// x[t] = table[ids[t]] row by row (the embedding lookup); ids on the device.
void gather_rows(const float* table,  // [V, n]
                 const int32_t* ids,  // [T]
                 float* x,            // [T, n]
                 int64_t T, int64_t n, StreamPtr stream = nullptr);

// Device memory for callers that cannot include CUDA headers (tests, traces/model): owning,
// move-only, byte-addressed; copies are synchronous.
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t bytes);
  ~DeviceArray();
  DeviceArray(DeviceArray&& o) noexcept;
  DeviceArray& operator=(DeviceArray&& o) noexcept;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  void* data() { return p_; }
  size_t bytes() const { return n_; }
  void upload(const void* host, size_t bytes);
  void download(void* host, size_t bytes) const;

  template <typename T>
  static DeviceArray from(const std::vector<T>& v) {
    DeviceArray a(v.size() * sizeof(T));
    a.upload(v.data(), v.size() * sizeof(T));
    return a;
  }
  template <typename T>
  T* as() {
    return static_cast<T*>(p_);
  }
  template <typename T>
  std::vector<T> to_vector() const {
    std::vector<T> v(n_ / sizeof(T));
    download(v.data(), v.size() * sizeof(T));
    return v;
  }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace kvsim::cuda
