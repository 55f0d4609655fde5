#include "traces/model/vo_norm.h"

#include <cmath>

namespace kvsim::model {

void vo_norm(const float* wo, const float* v, int64_t T, int64_t H, int64_t Hkv, int64_t D, int64_t dim, float* out) {
  const int64_t G = H / Hkv, qd = H * D;
#if defined(KVSIM_HAVE_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (int64_t ht = 0; ht < H * T; ++ht) {
    const int64_t h = ht / T, t = ht % T;
    const float* vi = v + (t * Hkv + h / G) * D;
    double n = 0;
    for (int64_t r = 0; r < dim; ++r) {
      const float* w = wo + r * qd + h * D;
      double y = 0;
      for (int64_t d = 0; d < D; ++d) y += static_cast<double>(w[d]) * vi[d];
      n += std::fabs(y);
    }
    out[ht] = static_cast<float>(n);
  }
}

}  // namespace kvsim::model
