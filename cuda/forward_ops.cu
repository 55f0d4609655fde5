// CUDA forward-pass ops: thread mappings around cuda/forward_core.h, and cuBLAS SGEMM for matmul.
// cuBLAS is opened on first use (dlopen) rather than linked: loading libcublas and libcublasLt
// (~600 MB) costs every process ~0.4 s at start-up, and only the GPU forward pass needs them.
#include <cublas_v2.h>
#include <dlfcn.h>

#include <climits>
#include <mutex>
#include <string>

#include "cuda/buffer.h"
#include "cuda/check.h"
#include "cuda/forward_core.h"
#include "cuda/forward_ops.h"

namespace kvsim::cuda {

namespace {

constexpr int kRowThreads = core::kRowLanes;
constexpr int kAttnThreads = core::kAttnLanes;
constexpr int kArgmaxThreads = core::kArgmaxLanes;
constexpr int kElemThreads = 256;

void check_blas(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw CudaError(std::string("cuBLAS error ") + std::to_string(static_cast<int>(st)) + " in " + what);
}

// The cuBLAS entry points used here, resolved from the library of the toolkit we were built with.
struct Blas {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSgemm_v2) sgemm = nullptr;
};

const Blas& blas() {
  static Blas b;
  static std::once_flag once;
  static std::string error;
  std::call_once(once, [] {
    const std::string name = "libcublas.so." KVSIM_STR(CUBLAS_VER_MAJOR);
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) lib = dlopen("libcublas.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      error = "cuBLAS could not be loaded (" + name + ": " + (e ? e : "not found") + ")";
      return;
    }
    auto sym = [&](const char* s) {
      void* p = dlsym(lib, s);
      if (!p && error.empty()) error = std::string("cuBLAS: symbol ") + s + " not found in " + name;
      return p;
    };
    b.create = reinterpret_cast<decltype(b.create)>(sym("cublasCreate_v2"));
    b.destroy = reinterpret_cast<decltype(b.destroy)>(sym("cublasDestroy_v2"));
    b.set_math_mode = reinterpret_cast<decltype(b.set_math_mode)>(sym("cublasSetMathMode"));
    b.set_stream = reinterpret_cast<decltype(b.set_stream)>(sym("cublasSetStream_v2"));
    b.sgemm = reinterpret_cast<decltype(b.sgemm)>(sym("cublasSgemm_v2"));
  });
  if (!error.empty()) throw CudaError(error);
  return b;
}

// One handle per host thread (cuBLAS handles are not thread-safe); the stream is set per call.
cublasHandle_t blas_handle() {
  struct Handle {
    cublasHandle_t h{};
    Handle() {
      check_blas(blas().create(&h), "cublasCreate");
      // FP32 products with FP32 accumulation: no TF32 tensor-core rounding, so the GPU matches the
      // CPU's sgemm to fp32 rounding (the recorder's tolerance rests on this).
      check_blas(blas().set_math_mode(h, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    }
    ~Handle() { blas().destroy(h); }  // no check: may run at thread exit after the context is gone
  };
  thread_local Handle handle;
  return handle.h;
}

unsigned blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 65535 * 16 ? (b < 1 ? 1 : b) : 65535 * 16);  // grid-stride beyond
}

int as_int(int64_t v, const char* what) {
  if (v < 0 || v > INT_MAX)
    throw UsageError(std::string("cuda::matmul: ") + what + " = " + std::to_string(v) + " exceeds int");
  return static_cast<int>(v);
}

__global__ void add_bias_kernel(float* y, const float* b, int64_t T, int64_t N) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < T * N; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += b[i % N];
}

__global__ void rmsnorm_kernel(const float* x, const float* g, float* y, int64_t n, float eps) {
  __shared__ float red[kRowThreads];
  const int lane = static_cast<int>(threadIdx.x);
  const float* xr = x + blockIdx.x * n;
  float* yr = y + blockIdx.x * n;
  red[lane] = core::sumsq_strided(xr, n, lane, kRowThreads);
  __syncthreads();
  for (int half = kRowThreads / 2; half > 0; half /= 2) {
    core::tree_step_sum(red, lane, half);
    __syncthreads();
  }
  const float scale = core::rms_inv(red[0], n, eps);
  for (int64_t i = lane; i < n; i += kRowThreads) yr[i] = core::rmsnorm_elem(xr[i], scale, g[i]);
}

__global__ void rope_kernel(float* x, int64_t T, int64_t n_heads, int64_t D, int64_t pos0, double theta,
                            RopeStyle style, const float* inv_freq) {
  const int64_t half = D / 2, total = T * n_heads * half;
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < total; j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = j % half, row = j / half, t = row / n_heads;
    core::rope_pair(x + row * D, i, D, pos0 + t, theta, style, inv_freq);
  }
}

__global__ void swiglu_kernel(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = core::swiglu_elem(gate[i], up[i]);
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] += y[i];
}

__global__ void gather_kernel(const float* table, const int32_t* ids, float* x, int64_t T, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < T * n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = table[static_cast<int64_t>(ids[i / n]) * n + i % n];
}

// Block (t, h): logits to shared memory, max and sum tree-reduced, weights normalised in place,
// one output dimension per thread (cuda/forward_core.h).
__global__ void attention_kernel(const float* q, const float* k, const float* v, const float* bias, const int64_t* pos,
                                 float* o, int64_t H, int64_t G, int64_t D, int64_t n, int64_t head_stride,
                                 int64_t pos0, float scale) {
  extern __shared__ float smem[];
  float* w = smem;        // [n]
  float* red = smem + n;  // [kAttnThreads]
  const int lane = static_cast<int>(threadIdx.x);
  const int64_t t = blockIdx.x / H, h = blockIdx.x % H, g = h / G;
  const float* qr = q + (t * H + h) * D;
  const float* kh = k + g * head_stride;
  const float* vh = v + g * head_stride;
  const float* bh = bias ? bias + g * n : nullptr;
  const int64_t* ph = pos ? pos + g * n : nullptr;
  float mx = core::kNegInf;
  for (int64_t s = lane; s < n; s += kAttnThreads) {
    w[s] = core::attn_logit(qr, kh, bh, ph, s, D, pos0 + t, scale);
    if (w[s] > mx) mx = w[s];
  }
  red[lane] = mx;
  __syncthreads();
  for (int half = kAttnThreads / 2; half > 0; half /= 2) {
    core::tree_step_max(red, lane, half);
    __syncthreads();
  }
  mx = red[0];
  __syncthreads();
  for (int64_t s = lane; s < n; s += kAttnThreads) w[s] = core::attn_exp(w[s], mx);
  red[lane] = core::sum_strided(w, n, lane, kAttnThreads);
  __syncthreads();
  for (int half = kAttnThreads / 2; half > 0; half /= 2) {
    core::tree_step_sum(red, lane, half);
    __syncthreads();
  }
  const float sum = red[0];
  for (int64_t s = lane; s < n; s += kAttnThreads) w[s] = core::attn_weight(w[s], sum, mx);
  __syncthreads();
  float* orow = o + (t * H + h) * D;
  for (int64_t d = lane; d < D; d += kAttnThreads) orow[d] = core::attn_out_elem(w, vh, n, D, d);
}

__global__ void argmax_kernel(const float* x, int64_t n, int64_t* out) {
  __shared__ int64_t idx[kArgmaxThreads];
  const int lane = static_cast<int>(threadIdx.x);
  idx[lane] = core::argmax_strided(x, n, lane, kArgmaxThreads);
  __syncthreads();
  for (int half = kArgmaxThreads / 2; half > 0; half /= 2) {
    core::tree_step_argmax(x, idx, lane, half);
    __syncthreads();
  }
  if (lane == 0) *out = idx[0];
}

}  // namespace

bool cublas_loadable(std::string* why) {
  try {
    blas();
    return true;
  } catch (const CudaError& e) {
    if (why) *why = e.what();
    return false;
  }
}

void matmul(const float* x, const float* w, const float* b, float* y, int64_t T, int64_t K, int64_t N,
            StreamPtr stream) {
  if (T == 0 || N == 0) return;
  cublasHandle_t h = blas_handle();
  check_blas(blas().set_stream(h, stream), "cublasSetStream");
  const float one = 1.0f, zero = 0.0f;
  // Row-major y[T, N] = x[T, K] W[N, K]^T is column-major y^T[N, T] = W^T^T x^T: op(A) = W^T of the
  // column-major [K, N] view of W, op(B) = the column-major [K, T] view of x.
  check_blas(blas().sgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, as_int(N, "N"), as_int(T, "T"), as_int(K, "K"), &one, w,
                          as_int(K, "K"), x, as_int(K, "K"), &zero, y, as_int(N, "N")),
             "cublasSgemm");
  if (b) {
    add_bias_kernel<<<blocks_for(T * N, kElemThreads), kElemThreads, 0, stream>>>(y, b, T, N);
    check_launch("add_bias_kernel");
  }
}

void rmsnorm(const float* x, const float* g, float* y, int64_t T, int64_t n, float eps, StreamPtr stream) {
  if (T == 0) return;
  rmsnorm_kernel<<<static_cast<unsigned>(T), kRowThreads, 0, stream>>>(x, g, y, n, eps);
  check_launch("rmsnorm_kernel");
}

void rope(float* x, int64_t T, int64_t n_heads, int64_t D, int64_t pos0, double theta, RopeStyle style,
          const float* inv_freq, StreamPtr stream) {
  if (style == RopeStyle::none || T * n_heads * (D / 2) == 0) return;
  rope_kernel<<<blocks_for(T * n_heads * (D / 2), kElemThreads), kElemThreads, 0, stream>>>(x, T, n_heads, D, pos0,
                                                                                            theta, style, inv_freq);
  check_launch("rope_kernel");
}

void swiglu(const float* gate, const float* up, float* out, int64_t n, StreamPtr stream) {
  if (n == 0) return;
  swiglu_kernel<<<blocks_for(n, kElemThreads), kElemThreads, 0, stream>>>(gate, up, out, n);
  check_launch("swiglu_kernel");
}

void attention(const float* q, const float* k, const float* v, const float* bias, const int64_t* pos, float* o,
               int64_t T, int64_t H, int64_t Hkv, int64_t D, int64_t n, int64_t head_stride, int64_t pos0,
               StreamPtr stream) {
  if (T == 0 || H == 0) return;
  if (Hkv < 1 || H % Hkv != 0)
    throw UsageError("cuda::attention: H = " + std::to_string(H) +
                     " is not a multiple of Hkv = " + std::to_string(Hkv));
  const size_t smem = static_cast<size_t>(n + kAttnThreads) * sizeof(float);
  if (smem > 48 * 1024) {  // above the default: opt in, once per size class, up to the device's limit
    int dev = 0, optin = 0;
    KVSIM_CUDA_CHECK(cudaGetDevice(&dev));
    KVSIM_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (smem > static_cast<size_t>(optin))
      throw UsageError("cuda::attention: a cache of n = " + std::to_string(n) + " slots needs " + std::to_string(smem) +
                       " bytes of shared memory per block; the device allows " + std::to_string(optin));
    KVSIM_CUDA_CHECK(
        cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  const float scale = 1.0f / sqrtf(static_cast<float>(D));  // as ref: 1 / std::sqrt(float(D))
  attention_kernel<<<static_cast<unsigned>(T * H), kAttnThreads, smem, stream>>>(q, k, v, bias, pos, o, H, H / Hkv, D,
                                                                                 n, head_stride, pos0, scale);
  check_launch("attention_kernel");
}

int64_t argmax(const float* x, int64_t n, StreamPtr stream) {
  if (n < 1) return 0;
  DeviceBuffer<int64_t> out(1);
  argmax_kernel<<<1, kArgmaxThreads, 0, stream>>>(x, n, out.data());
  check_launch("argmax_kernel");
  int64_t r = 0;
  out.download(&r, 1, stream);
  KVSIM_CUDA_CHECK(cudaStreamSynchronize(stream));
  return r;
}

void add_inplace(float* x, const float* y, int64_t n, StreamPtr stream) {
  if (n == 0) return;
  add_kernel<<<blocks_for(n, kElemThreads), kElemThreads, 0, stream>>>(x, y, n);
  check_launch("add_kernel");
}

void gather_rows(const float* table, const int32_t* ids, float* x, int64_t T, int64_t n, StreamPtr stream) {
  if (T * n == 0) return;
  gather_kernel<<<blocks_for(T * n, kElemThreads), kElemThreads, 0, stream>>>(table, ids, x, T, n);
  check_launch("gather_kernel");
}

// ---- DeviceArray ------------------------------------------------------------------------------

DeviceArray::DeviceArray(size_t bytes) : n_(bytes) {
  if (bytes) KVSIM_CUDA_CHECK(cudaMalloc(&p_, bytes));
}
DeviceArray::~DeviceArray() {
  if (p_) cudaFree(p_);
}
DeviceArray::DeviceArray(DeviceArray&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
DeviceArray& DeviceArray::operator=(DeviceArray&& o) noexcept {
  if (this != &o) {
    if (p_) cudaFree(p_);
    p_ = o.p_, n_ = o.n_;
    o.p_ = nullptr, o.n_ = 0;
  }
  return *this;
}
void DeviceArray::upload(const void* host, size_t bytes) {
  if (bytes > n_)
    throw UsageError("DeviceArray::upload: " + std::to_string(bytes) + " bytes into " + std::to_string(n_));
  if (bytes) KVSIM_CUDA_CHECK(cudaMemcpy(p_, host, bytes, cudaMemcpyHostToDevice));
}
void DeviceArray::download(void* host, size_t bytes) const {
  if (bytes > n_)
    throw UsageError("DeviceArray::download: " + std::to_string(bytes) + " bytes from " + std::to_string(n_));
  if (bytes) KVSIM_CUDA_CHECK(cudaMemcpy(host, p_, bytes, cudaMemcpyDeviceToHost));
}

}  // namespace kvsim::cuda
