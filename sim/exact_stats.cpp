#include "sim/exact_stats.h"

#include "sim/kernels/kernels.h"

namespace kvsim {

void ExactStats::resize(int64_t H_, int64_t T_, int64_t D_, int64_t K_) {
  H = H_, T = T_, D = D_, K = K_;
  o.assign(H * T * D, 0.0f);
  lse.assign(H * T, 0.0);
  entropy.assign(H * T, 0.0f);
  top_pos.assign(H * T * K, -1);
  top_w.assign(H * T * K, 0.0f);
}

double ExactStats::bytes() const {
  return 8.0 * static_cast<double>(lse.size()) +
         4.0 * static_cast<double>(o.size() + entropy.size() + top_pos.size() + top_w.size());
}

void compute_exact_stats(const LayerView& lv, Backend b, ExactStats& rs) {
  rs.resize(lv.H, lv.T, lv.D);
  kernels(b).attn_stats(lv.q, lv.k, lv.v, lv.H, lv.Hkv, lv.T, lv.D, rs.K, rs.o.data(), rs.lse.data(), rs.entropy.data(),
                        rs.top_pos.data(), rs.top_w.data());
}

void compute_prompt_colsums(const LayerView& lv, const ExactStats& rs, int64_t P, Backend b, std::vector<float>& out) {
  out.assign(lv.H * P, 0.0f);
  kernels(b).prompt_colsums(lv.q, lv.k, rs.lse.data(), lv.H, lv.Hkv, lv.T, lv.D, P, out.data());
}

}  // namespace kvsim
