// Compressed attention on the GPU: the twin of ref::attend_slots (sim/kernels/attend.h), and the batched form the
// replay's cuda path uses (sim/replay.cpp): every instance of a layer advances in lockstep, and one launch evaluates
// all their caches at a step. The arithmetic is sim/kernels/attend_core.h (shared with ref and the host emulation the
// tests run); each value is computed by one thread in ref's order.
#pragma once

#include <cstdint>
#include <vector>

#include "sim/kernels/attend.h"

namespace kvsim::cuda {

// One attention request: the G query heads sharing one cache at one step. Offsets index the batch's
// packed arrays (AttendBatch).
struct AttendRequest {
  int64_t slot0;    // first slot in the packed key/value/bias/view arrays
  int64_t n;        // slots (>= 1)
  int64_t q0;       // first query row in the packed queries [rows, D]
  int64_t G;        // query heads
  int64_t out0;     // first element of this request's [G, n] logits / weights
  int32_t n_views;  // 1: plain softmax
};

// Packed requests, host side. add() copies the inputs; run_attend_batch() fills the outputs.
struct AttendBatch {
  int64_t D = 0;
  std::vector<AttendRequest> req;
  std::vector<float> q;       // [rows, D]
  std::vector<float> key;     // [slots, D]
  std::vector<float> value;   // [slots, D]
  std::vector<float> bias;    // [slots]
  std::vector<int32_t> view;  // [slots] (0 where a request has one view)
  std::vector<double> logit;  // [sum of G * n] outputs, request r at req[r].out0, row-major [G, n]
  std::vector<float> w;       // [sum of G * n]
  std::vector<float> o_hat;   // [rows, D]

  void clear(int64_t D_);
  // One cache's request (arguments as kvsim::ref::attend_slots, sim/kernels/attend.h); returns its index.
  int64_t add(const float* q, int64_t q_stride, int64_t G, const SlotsView& slots);
  int64_t rows() const { return static_cast<int64_t>(q.size()) / (D > 0 ? D : 1); }
  int64_t slots() const { return static_cast<int64_t>(bias.size()); }
  const double* logit_of(int64_t r) const { return logit.data() + req[r].out0; }
  const float* w_of(int64_t r) const { return w.data() + req[r].out0; }
  const float* o_hat_of(int64_t r) const { return o_hat.data() + req[r].q0 * D; }
};

// Runs every request of the batch on the device (one block per query row) and fills logit, w, o_hat.
// The device buffers persist per calling thread and grow as needed.
void run_attend_batch(AttendBatch& b);

}  // namespace kvsim::cuda
