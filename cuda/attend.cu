#include "cuda/attend.h"

#include <cmath>

#include "cuda/buffer.h"
#include "sim/base/error.h"
#include "sim/kernels/attend_core.h"

namespace kvsim::cuda {

namespace {

constexpr int kThreads = 128;

// One block per query row. row_req[row] = (request, g). p: scratch [sum of G * n] doubles.
__global__ void attend_batch_kernel(const AttendRequest* __restrict__ req, const int32_t* __restrict__ row_req,
                                    const float* __restrict__ q, const float* __restrict__ key,
                                    const float* __restrict__ value, const float* __restrict__ bias,
                                    const int32_t* __restrict__ view, int64_t D, double scale, double* logit, double* p,
                                    float* w, float* o_hat) {
  const int64_t row = blockIdx.x;
  const AttendRequest r = req[row_req[2 * row]];
  const int64_t g = row_req[2 * row + 1];
  const float* qg = q + row * D;
  const float* ks = key + r.slot0 * D;
  const float* vs = value + r.slot0 * D;
  double* z = logit + r.out0 + g * r.n;
  double* pg = p + r.out0 + g * r.n;
  for (int64_t s = threadIdx.x; s < r.n; s += blockDim.x)
    z[s] = core::slot_logit(qg, ks + s * D, bias[r.slot0 + s], D, scale);
  __syncthreads();
  // The softmax is O(n) against the logits' O(n D): one thread keeps ref's summation order.
  if (threadIdx.x == 0) view_softmax(z, r.n_views > 1 ? view + r.slot0 : nullptr, r.n_views, r.n, pg);
  __syncthreads();
  for (int64_t s = threadIdx.x; s < r.n; s += blockDim.x) w[r.out0 + g * r.n + s] = static_cast<float>(pg[s]);
  for (int64_t x = threadIdx.x; x < D; x += blockDim.x) o_hat[row * D + x] = core::out_channel(pg, vs, r.n, D, x);
}

struct Workspace {
  DeviceBuffer<AttendRequest> req;
  DeviceBuffer<int32_t> row_req, view;
  DeviceBuffer<float> q, key, value, bias, w, o_hat;
  DeviceBuffer<double> logit, p;
  std::vector<int32_t> row_req_host;
  Stream stream;
};

}  // namespace

void run_attend_batch(AttendBatch& b) {
  if (b.req.empty()) return;
  thread_local Workspace ws;
  const int64_t rows = b.rows(), slots = b.slots(), D = b.D;
  const int64_t outs = b.req.back().out0 + b.req.back().G * b.req.back().n;
  ws.row_req_host.clear();
  for (size_t r = 0; r < b.req.size(); ++r)
    for (int64_t g = 0; g < b.req[r].G; ++g) {
      ws.row_req_host.push_back(static_cast<int32_t>(r));
      ws.row_req_host.push_back(static_cast<int32_t>(g));
    }
  cudaStream_t s = ws.stream.get();
  ws.req.upload(b.req.data(), b.req.size(), s);
  ws.row_req.upload(ws.row_req_host.data(), ws.row_req_host.size(), s);
  ws.q.upload(b.q.data(), rows * D, s);
  ws.key.upload(b.key.data(), slots * D, s);
  ws.value.upload(b.value.data(), slots * D, s);
  ws.bias.upload(b.bias.data(), slots, s);
  ws.view.upload(b.view.data(), slots, s);
  ws.logit.resize(outs), ws.p.resize(outs), ws.w.resize(outs), ws.o_hat.resize(rows * D);
  attend_batch_kernel<<<static_cast<unsigned>(rows), kThreads, 0, s>>>(
      ws.req.data(), ws.row_req.data(), ws.q.data(), ws.key.data(), ws.value.data(), ws.bias.data(), ws.view.data(), D,
      1.0 / std::sqrt(static_cast<double>(D)), ws.logit.data(), ws.p.data(), ws.w.data(), ws.o_hat.data());
  check_launch("attend_batch_kernel");
  b.logit.resize(outs), b.w.resize(outs), b.o_hat.resize(rows * D);
  ws.logit.download(b.logit.data(), outs, s);
  ws.w.download(b.w.data(), outs, s);
  ws.o_hat.download(b.o_hat.data(), rows * D, s);
  ws.stream.sync();
}

void attend_slots(const float* q, int64_t q_stride, int64_t G, int64_t D, const SlotsView& slots, double* logit,
                  float* w, float* o_hat) {
  AttendBatch b;
  b.clear(D);
  b.add(q, q_stride, G, slots);
  run_attend_batch(b);
  std::copy(b.logit.begin(), b.logit.end(), logit);
  std::copy(b.w.begin(), b.w.end(), w);
  std::copy(b.o_hat.begin(), b.o_hat.end(), o_hat);
}

}  // namespace kvsim::cuda
