// Host-side packing of cuda/attend.h (plain C++, built with and without CUDA: the tests' host
// emulation packs batches the same way).
#include <algorithm>

#include "cuda/attend.h"
#include "sim/base/error.h"

namespace kvsim::cuda {

void AttendBatch::clear(int64_t D_) {
  D = D_;
  req.clear(), q.clear(), key.clear(), value.clear(), bias.clear(), view.clear();
}

int64_t AttendBatch::add(const float* qp, int64_t q_stride, int64_t G, const SlotsView& sv) {
  const float *k = sv.key, *v = sv.value, *b = sv.bias;
  const int32_t* vw = sv.view;
  const int64_t n = sv.n, n_views = sv.n_views;
  KVSIM_ASSERT(n >= 1 && G >= 1 && D > 0);
  AttendRequest r;
  r.slot0 = slots(), r.n = n, r.q0 = rows(), r.G = G;
  r.out0 = req.empty() ? 0 : req.back().out0 + req.back().G * req.back().n;
  r.n_views = vw && n_views > 1 ? static_cast<int32_t>(n_views) : 1;
  for (int64_t g = 0; g < G; ++g) q.insert(q.end(), qp + g * q_stride, qp + g * q_stride + D);
  key.insert(key.end(), k, k + n * D);
  value.insert(value.end(), v, v + n * D);
  bias.insert(bias.end(), b, b + n);
  if (r.n_views > 1)
    view.insert(view.end(), vw, vw + n);
  else
    view.insert(view.end(), static_cast<size_t>(n), 0);
  req.push_back(r);
  return static_cast<int64_t>(req.size()) - 1;
}

}  // namespace kvsim::cuda
