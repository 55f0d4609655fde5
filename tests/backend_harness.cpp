// The kernel tables of the harness's targets (tests/backend_harness.h): omp's and cuda's from
// kvsim::kernels(Backend), completed for cuda by host-pointer adapters around the device forward
// ops (cuda/forward_ops.h works on device buffers), and one of the host emulation of the CUDA
// kernels.
#include "tests/backend_harness.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cuda/attend.h"
#include "cuda/forward_ops.h"
#include "sim/base/error.h"
#include "tests/cuda_emulation.h"
#include "tests/cuda_forward_test_util.h"

namespace kvsim::test {

namespace {

namespace fwd = kvsim_test::cuda_fwd;

// Attention's KV views packed as the GPU runner's cache: head g's n slots at k + g * head_stride,
// with head_stride = (n + 3) D and the 3 rows past n NaN, so a kernel that reads past n shows. pos
// and bias are null where every view has positions 0..n-1 and no bias: the runner's full cache,
// the kernels' pos == nullptr path.
struct PackedKv {
  int64_t n = 0, head_stride = 0;
  std::vector<float> k, v, bias;
  std::vector<int64_t> pos;
  PackedKv(const KvView* kv, int64_t Hkv, int64_t D) : n(kv[0].n), head_stride((kv[0].n + 3) * D) {
    bool identity = true, any_bias = false;
    for (int64_t g = 0; g < Hkv; ++g) {
      if (kv[g].n != n)
        throw UsageError("test attention: KV head " + std::to_string(g) + " has n = " + std::to_string(kv[g].n) +
                         ", head 0 has " + std::to_string(n) + " (the GPU layout needs one n)");
      any_bias = any_bias || kv[g].bias;
      for (int64_t s = 0; s < n; ++s) identity = identity && (!kv[g].pos || kv[g].pos[s] == s);
    }
    k.assign(static_cast<size_t>(Hkv * head_stride), NAN);
    v = k;
    for (int64_t g = 0; g < Hkv; ++g) {
      std::copy(kv[g].k, kv[g].k + n * D, k.begin() + g * head_stride);
      std::copy(kv[g].v, kv[g].v + n * D, v.begin() + g * head_stride);
    }
    if (any_bias || !identity) {
      bias.assign(static_cast<size_t>(Hkv * n), 0.0f);
      pos.resize(static_cast<size_t>(Hkv * n));
      for (int64_t g = 0; g < Hkv; ++g)
        for (int64_t s = 0; s < n; ++s) {
          if (kv[g].bias) bias[static_cast<size_t>(g * n + s)] = kv[g].bias[s];
          pos[static_cast<size_t>(g * n + s)] = kv[g].pos ? kv[g].pos[s] : s;
        }
    }
  }
  const float* bias_ptr() const { return bias.empty() ? nullptr : bias.data(); }
  const int64_t* pos_ptr() const { return pos.empty() ? nullptr : pos.data(); }
};

// ---- cuda-host: the emulation ------------------------------------------------------------------

// attend_slots as cuda::attend_slots runs it: a batch of one request (cuda/attend.cu).
void host_attend_slots(const float* q, int64_t q_stride, int64_t G, int64_t D, const SlotsView& slots, double* logit,
                       float* w, float* o_hat) {
  cuda::AttendBatch b;
  b.clear(D);
  b.add(q, q_stride, G, slots);
  emulate_attend_batch(b);
  std::copy(b.logit.begin(), b.logit.end(), logit);
  std::copy(b.w.begin(), b.w.end(), w);
  std::copy(b.o_hat.begin(), b.o_hat.end(), o_hat);
}

void host_rmsnorm(const float* x, const float* g, float* y, int64_t T, int64_t n, float eps) {
  fwd::emulate_rmsnorm(x, g, y, T, n, eps);
}

void host_swiglu(const float* gate, const float* up, float* out, int64_t n) {  // one thread per element
  for (int64_t i = 0; i < n; ++i) out[i] = fwd::core::swiglu_elem(gate[i], up[i]);
}

void host_attention(const float* q, const KvView* kv, float* o, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                    int64_t pos0) {
  const PackedKv p(kv, Hkv, D);
  fwd::emulate_attention(q, p.k.data(), p.v.data(), p.bias_ptr(), p.pos_ptr(), o, T, H, Hkv, D, p.n, p.head_stride,
                         pos0);
}

int64_t host_argmax(const float* x, int64_t n) { return fwd::emulate_argmax(x, n); }

Kernels host_table() {
  Kernels k;
  k.backend = Backend::cuda;
  k.attend_slots = host_attend_slots;
  k.attn_stats = emulate_attn_stats;
  k.prompt_colsums = emulate_prompt_colsums;
  // Quantization: ref runs the kernels' work items (sim/kernels/quant_core.h) serially in the
  // kernels' order, so its emulation would be ref itself; the device cases compare the launch.
  k.quant_uniform = nullptr;
  k.dequant_uniform = nullptr;
  k.quant_nf4 = nullptr;
  k.dequant_nf4 = nullptr;
  k.matmul = nullptr;  // cuBLAS SGEMM: no emulation (the emulated runner in test_cuda_forward.cpp uses ref's)
  k.rmsnorm = host_rmsnorm;
  k.rope = fwd::emulate_rope;
  k.softmax = nullptr;  // no GPU kernel
  k.swiglu = host_swiglu;
  k.attention = host_attention;
  k.argmax = host_argmax;
  return k;
}

// ---- cuda: the device forward ops behind ref's host-pointer signatures -------------------------

template <class T>
cuda::DeviceArray dev(const T* p, int64_t n) {
  cuda::DeviceArray a(static_cast<size_t>(n) * sizeof(T));
  a.upload(p, static_cast<size_t>(n) * sizeof(T));
  return a;
}

void device_matmul(const float* x, const float* w, const float* b, float* y, int64_t T, int64_t K, int64_t N) {
  auto dx = dev(x, T * K), dw = dev(w, N * K), dy = cuda::DeviceArray(static_cast<size_t>(T * N) * sizeof(float));
  cuda::DeviceArray db;
  if (b) db = dev(b, N);
  cuda::matmul(dx.as<float>(), dw.as<float>(), b ? db.as<float>() : nullptr, dy.as<float>(), T, K, N);
  dy.download(y, static_cast<size_t>(T * N) * sizeof(float));
}

void device_rmsnorm(const float* x, const float* g, float* y, int64_t T, int64_t n, float eps) {
  auto dx = dev(x, T * n), dg = dev(g, n), dy = cuda::DeviceArray(static_cast<size_t>(T * n) * sizeof(float));
  cuda::rmsnorm(dx.as<float>(), dg.as<float>(), dy.as<float>(), T, n, eps);
  dy.download(y, static_cast<size_t>(T * n) * sizeof(float));
}

void device_rope(float* x, int64_t T, int64_t n_heads, int64_t D, int64_t pos0, double theta, RopeStyle style,
                 const float* inv_freq) {
  auto dx = dev(x, T * n_heads * D);
  cuda::DeviceArray dinv;
  if (inv_freq) dinv = dev(inv_freq, D / 2);
  cuda::rope(dx.as<float>(), T, n_heads, D, pos0, theta, style, inv_freq ? dinv.as<float>() : nullptr);
  dx.download(x, static_cast<size_t>(T * n_heads * D) * sizeof(float));
}

void device_swiglu(const float* gate, const float* up, float* out, int64_t n) {
  auto dg = dev(gate, n), du = dev(up, n), dout = cuda::DeviceArray(static_cast<size_t>(n) * sizeof(float));
  cuda::swiglu(dg.as<float>(), du.as<float>(), dout.as<float>(), n);
  dout.download(out, static_cast<size_t>(n) * sizeof(float));
}

void device_attention(const float* q, const KvView* kv, float* o, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                      int64_t pos0) {
  const PackedKv p(kv, Hkv, D);
  auto dq = dev(q, T * H * D), dk = dev(p.k.data(), static_cast<int64_t>(p.k.size())),
       dv = dev(p.v.data(), static_cast<int64_t>(p.v.size()));
  auto dout = cuda::DeviceArray(static_cast<size_t>(T * H * D) * sizeof(float));
  cuda::DeviceArray db, dp;
  if (p.bias_ptr()) db = dev(p.bias.data(), static_cast<int64_t>(p.bias.size()));
  if (p.pos_ptr()) dp = dev(p.pos.data(), static_cast<int64_t>(p.pos.size()));
  cuda::attention(dq.as<float>(), dk.as<float>(), dv.as<float>(), p.bias_ptr() ? db.as<float>() : nullptr,
                  p.pos_ptr() ? dp.as<int64_t>() : nullptr, dout.as<float>(), T, H, Hkv, D, p.n, p.head_stride, pos0);
  dout.download(o, static_cast<size_t>(T * H * D) * sizeof(float));
}

int64_t device_argmax(const float* x, int64_t n) {
  auto dx = dev(x, n);
  return cuda::argmax(dx.as<float>(), n);
}

Kernels device_table() {
  Kernels k = kernels(Backend::cuda);
  k.matmul = device_matmul;
  k.rmsnorm = device_rmsnorm;
  k.rope = device_rope;
  k.softmax = nullptr;  // no GPU kernel
  k.swiglu = device_swiglu;
  k.attention = device_attention;
  k.argmax = device_argmax;
  return k;
}

Kernels omp_table() {
  Kernels k = kernels(Backend::omp);
  k.softmax = nullptr;  // omp::softmax and omp::argmax call ref's (sim/kernels/omp/forward_ops.cpp)
  k.argmax = nullptr;
  return k;
}

}  // namespace

const Kernels& target_kernels(Target t) {
  static const Kernels omp = omp_table(), host = host_table(), device = device_table();
  switch (t) {
    case Target::omp: return omp;
    case Target::cuda_host: return host;
    case Target::cuda: return device;
  }
  return omp;
}

}  // namespace kvsim::test
