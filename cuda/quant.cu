// CUDA quantization kernels (cuda/quant.h). Each kernel maps threads to the work items of
// sim/kernels/quant_core.h and does nothing else: the arithmetic is the core's, which ref runs
// serially in the same kernel order (so the GPU must equal ref bit for bit). Items that write packed codes own whole
// bytes, so no two threads write the same byte; block parameters come from a kernel launched before the codes. Buffer
// shapes are documented on the core item each kernel calls.
#include <algorithm>

#include "cuda/buffer.h"
#include "cuda/quant.h"
#include "sim/kernels/quant_common.h"
#include "sim/kernels/quant_core.h"

namespace kvsim::cuda {

namespace {

constexpr int kThreads = 256;

// Enough blocks to cover n items, capped: the kernels loop over the rest (grid-stride).
unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), int64_t{1} << 20));
}

__device__ int64_t first_item() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ int64_t item_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

__global__ void uniform_params(const float* x, core::UniformShape s, uint16_t* min_f16, uint16_t* scale_f16) {
  const int64_t n = core::uniform_blocks(s);
  for (int64_t b = first_item(); b < n; b += item_stride()) core::uniform_params_item(x, s, b, min_f16, scale_f16);
}

__global__ void uniform_codes(const float* x, core::UniformShape s, const uint16_t* min_f16, const uint16_t* scale_f16,
                              uint8_t* codes) {
  const int64_t n = core::uniform_code_bytes(s);
  for (int64_t i = first_item(); i < n; i += item_stride())
    core::uniform_codes_item(x, s, min_f16, scale_f16, i, codes);
}

__global__ void uniform_decode(const uint8_t* codes, const uint16_t* min_f16, const uint16_t* scale_f16,
                               core::UniformShape s, float* y) {
  const int64_t n = s.n_t * s.D;
  for (int64_t p = first_item(); p < n; p += item_stride())
    core::uniform_decode_item(codes, min_f16, scale_f16, s, p, y);
}

__global__ void nf4_absmax(const float* x, core::Nf4Shape s, float* absmax) {
  const int64_t n = core::nf4_blocks(s);
  for (int64_t b = first_item(); b < n; b += item_stride()) core::nf4_absmax_item(x, s, b, absmax);
}

// One thread: the mean is ref's sequential double sum, whose rounding a parallel sum would not repeat.
__global__ void nf4_dq_mean(const float* absmax, int64_t n_blocks, float* mean) {
  if (first_item() == 0) *mean = core::nf4_dq_mean(absmax, n_blocks);
}

__global__ void nf4_dq_group(const float* absmax, int64_t n_blocks, const float* mean, float* dq_scale,
                             int8_t* absmax_q) {
  const int64_t n = (n_blocks + 255) / 256;
  const float m = *mean;
  for (int64_t g = first_item(); g < n; g += item_stride())
    core::nf4_dq_group_item(absmax, n_blocks, m, g, dq_scale, absmax_q);
}

// The NF4 table is built by the core in shared memory (one copy per thread block).
__device__ const core::Nf4Table& shared_nf4_table() {
  __shared__ core::Nf4Table tab;
  if (threadIdx.x == 0) core::nf4_table_init(&tab);
  __syncthreads();
  return tab;
}

__global__ void nf4_codes(const float* x, core::Nf4Shape s, const float* absmax, const int8_t* absmax_q,
                          const float* dq_scale, const float* dq_mean, uint8_t* codes) {
  const core::Nf4Table& tab = shared_nf4_table();
  const int64_t n = s.n_t * s.D / 2;
  for (int64_t i = first_item(); i < n; i += item_stride())
    core::nf4_codes_item(x, s, absmax, absmax_q, dq_scale, dq_mean, tab, i, codes);
}

__global__ void nf4_decode(const uint8_t* codes, core::Nf4Shape s, const float* absmax, const int8_t* absmax_q,
                           const float* dq_scale, const float* dq_mean, float* y) {
  const core::Nf4Table& tab = shared_nf4_table();
  const float mean = absmax_q ? *dq_mean : 0.0f;
  const int64_t n = s.n_t * s.D;
  for (int64_t p = first_item(); p < n; p += item_stride())
    core::nf4_decode_item(codes, s, absmax, absmax_q, dq_scale, mean, tab, p, y);
}

using quant::nf4_shape;
using quant::uniform_shape;

cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

template <typename T>
void upload(DeviceBuffer<T>& d, const std::vector<T>& h, cudaStream_t st) {
  if (!h.empty()) d.upload(h.data(), h.size(), st);
}
template <typename T>
void download(const DeviceBuffer<T>& d, std::vector<T>& h, cudaStream_t st) {
  if (!h.empty()) d.download(h.data(), h.size(), st);
}

}  // namespace

// ---- device pointers -----------------------------------------------------------------------------

void quant_uniform_device(const float* x, int64_t n_t, int64_t D, int bits, QuantAxis axis, int64_t group,
                          UniformDevice out, void* stream) {
  quant::check_uniform_args(n_t, D, bits, axis, group);
  const core::UniformShape s = uniform_shape(n_t, D, bits, axis, group);
  if (n_t * D == 0) return;
  const cudaStream_t st = as_stream(stream);
  uniform_params<<<grid_for(core::uniform_blocks(s)), kThreads, 0, st>>>(x, s, out.min_f16, out.scale_f16);
  check_launch("uniform_params");
  uniform_codes<<<grid_for(core::uniform_code_bytes(s)), kThreads, 0, st>>>(x, s, out.min_f16, out.scale_f16,
                                                                            out.codes);
  check_launch("uniform_codes");
}

void dequant_uniform_device(const UniformDevice& q, int64_t n_t, int64_t D, int bits, QuantAxis axis, int64_t group,
                            float* y, void* stream) {
  quant::check_uniform_args(n_t, D, bits, axis, group);
  const core::UniformShape s = uniform_shape(n_t, D, bits, axis, group);
  if (n_t * D == 0) return;
  uniform_decode<<<grid_for(n_t * D), kThreads, 0, as_stream(stream)>>>(q.codes, q.min_f16, q.scale_f16, s, y);
  check_launch("uniform_decode");
}

void quant_nf4_device(const float* x, int64_t n_t, int64_t D, QuantAxis axis, int64_t block, bool double_quant,
                      Nf4Device out, void* stream) {
  quant::check_nf4_args(n_t, D, block);
  const core::Nf4Shape s = nf4_shape(n_t, D, axis, block);
  const int64_t n_blocks = core::nf4_blocks(s);
  const cudaStream_t st = as_stream(stream);
  if (double_quant) {  // the mean of no blocks is 0, as in ref
    if (n_blocks == 0) KVSIM_CUDA_CHECK(cudaMemsetAsync(out.dq_mean, 0, sizeof(float), st));
  }
  if (n_blocks == 0) return;
  nf4_absmax<<<grid_for(n_blocks), kThreads, 0, st>>>(x, s, out.absmax);
  check_launch("nf4_absmax");
  if (double_quant) {
    nf4_dq_mean<<<1, 1, 0, st>>>(out.absmax, n_blocks, out.dq_mean);
    check_launch("nf4_dq_mean");
    nf4_dq_group<<<grid_for(core::nf4_dq_groups(s)), kThreads, 0, st>>>(out.absmax, n_blocks, out.dq_mean, out.dq_scale,
                                                                        out.absmax_q);
    check_launch("nf4_dq_group");
  }
  nf4_codes<<<grid_for(n_t * D / 2), kThreads, 0, st>>>(x, s, out.absmax, double_quant ? out.absmax_q : nullptr,
                                                        out.dq_scale, out.dq_mean, out.codes);
  check_launch("nf4_codes");
}

void dequant_nf4_device(const Nf4Device& q, int64_t n_t, int64_t D, QuantAxis axis, int64_t block, bool double_quant,
                        float* y, void* stream) {
  quant::check_nf4_args(n_t, D, block);
  const core::Nf4Shape s = nf4_shape(n_t, D, axis, block);
  if (n_t * D == 0) return;
  nf4_decode<<<grid_for(n_t * D), kThreads, 0, as_stream(stream)>>>(
      q.codes, s, q.absmax, double_quant ? q.absmax_q : nullptr, q.dq_scale, q.dq_mean, y);
  check_launch("nf4_decode");
}

// ---- host pointers -------------------------------------------------------------------------------

UniformQuantized quant_uniform(const float* x, int64_t n_t, int64_t D, int bits, QuantAxis axis, int64_t group) {
  quant::check_uniform_args(n_t, D, bits, axis, group);
  UniformQuantized q = quant::make_uniform(n_t, D, bits, axis, group);
  if (n_t * D == 0) return q;
  Stream st;
  DeviceBuffer<float> dx;
  dx.upload(x, static_cast<size_t>(n_t * D), st.get());
  DeviceBuffer<uint8_t> codes(q.codes.size());
  DeviceBuffer<uint16_t> scale(q.scale_f16.size()), mn(q.min_f16.size());
  quant_uniform_device(dx.data(), n_t, D, bits, axis, group, UniformDevice{codes.data(), scale.data(), mn.data()},
                       st.get());
  download(codes, q.codes, st.get());
  download(scale, q.scale_f16, st.get());
  download(mn, q.min_f16, st.get());
  st.sync();
  return q;
}

void dequant_uniform(const UniformQuantized& q, float* y) {
  quant::check_uniform_args(q.n_t, q.D, q.bits, q.axis, q.group);
  const size_t n = static_cast<size_t>(q.n_t * q.D);
  if (n == 0) return;
  Stream st;
  DeviceBuffer<uint8_t> codes;
  DeviceBuffer<uint16_t> scale, mn;
  upload(codes, q.codes, st.get());
  upload(scale, q.scale_f16, st.get());
  upload(mn, q.min_f16, st.get());
  DeviceBuffer<float> dy(n);
  dequant_uniform_device(UniformDevice{codes.data(), scale.data(), mn.data()}, q.n_t, q.D, q.bits, q.axis, q.group,
                         dy.data(), st.get());
  dy.download(y, n, st.get());
  st.sync();
}

Nf4Quantized quant_nf4(const float* x, int64_t n_t, int64_t D, QuantAxis axis, int64_t block, bool double_quant) {
  quant::check_nf4_args(n_t, D, block);
  Nf4Quantized q = quant::make_nf4(n_t, D, axis, block, double_quant);
  const size_t n_blocks = q.absmax.size();
  if (double_quant) {
    q.absmax_q.assign(n_blocks, 0);
    q.dq_scale.assign((n_blocks + 255) / 256, 0.0f);
  }
  if (n_blocks == 0) return q;
  Stream st;
  DeviceBuffer<float> dx, absmax(n_blocks), dq_scale(q.dq_scale.size()), dq_mean(1);
  dx.upload(x, static_cast<size_t>(n_t * D), st.get());
  DeviceBuffer<uint8_t> codes(q.codes.size());
  DeviceBuffer<int8_t> absmax_q(q.absmax_q.size());
  const Nf4Device out{codes.data(), absmax.data(), absmax_q.data(), dq_scale.data(), dq_mean.data()};
  quant_nf4_device(dx.data(), n_t, D, axis, block, double_quant, out, st.get());
  download(codes, q.codes, st.get());
  download(absmax, q.absmax, st.get());
  if (double_quant) {
    download(absmax_q, q.absmax_q, st.get());
    download(dq_scale, q.dq_scale, st.get());
    dq_mean.download(&q.dq_mean, 1, st.get());
  }
  st.sync();
  return q;
}

void dequant_nf4(const Nf4Quantized& q, float* y) {
  quant::check_nf4_args(q.n_t, q.D, q.block);
  const size_t n = static_cast<size_t>(q.n_t * q.D);
  if (n == 0) return;
  Stream st;
  DeviceBuffer<uint8_t> codes;
  DeviceBuffer<float> absmax, dq_scale, dq_mean;
  DeviceBuffer<int8_t> absmax_q;
  upload(codes, q.codes, st.get());
  if (q.double_quant) {
    upload(absmax_q, q.absmax_q, st.get());
    upload(dq_scale, q.dq_scale, st.get());
    dq_mean.upload(&q.dq_mean, 1, st.get());
  } else {
    upload(absmax, q.absmax, st.get());
  }
  DeviceBuffer<float> dy(n);
  const Nf4Device in{codes.data(), absmax.data(), absmax_q.data(), dq_scale.data(), dq_mean.data()};
  dequant_nf4_device(in, q.n_t, q.D, q.axis, q.block, q.double_quant, dy.data(), st.get());
  dy.download(y, n, st.get());
  st.sync();
}

}  // namespace kvsim::cuda
