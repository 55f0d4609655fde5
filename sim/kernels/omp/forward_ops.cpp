#include "sim/kernels/forward_ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "sim/kernels/forward_ops.h"

namespace kvsim::omp {

void matmul(const float* x, const float* w, const float* b, float* y, int64_t T, int64_t K, int64_t N) {
  // One threading runtime only: OpenBLAS runs single-threaded inside OpenMP threads that each own a
  // block of output columns (rows of W). OpenBLAS's own pool spinning next to OpenMP's oversubscribes
  // the cores (measured 2x slower on 2 cores).
  static const bool single = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)single;
  const int64_t work = T * K * N;
  const int64_t blocks = work < (int64_t{1} << 18) ? 1 : std::max<int64_t>(1, std::min<int64_t>(N / 16, 64));
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t n0 = N * i / blocks, n1 = N * (i + 1) / blocks;
    if (n1 == n0) continue;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(T), static_cast<blasint>(n1 - n0),
                static_cast<blasint>(K), 1.0f, x, static_cast<blasint>(K), w + n0 * K, static_cast<blasint>(K), 0.0f,
                y + n0, static_cast<blasint>(N));
    if (b)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t n = n0; n < n1; ++n) y[t * N + n] += b[n];
  }
}

void rmsnorm(const float* x, const float* g, float* y, int64_t T, int64_t n, float eps) {
#pragma omp parallel for if (T > 1)
  for (int64_t t = 0; t < T; ++t) ref::rmsnorm(x + t * n, g, y + t * n, 1, n, eps);
}

void rope(float* x, int64_t T, int64_t n_heads, int64_t D, int64_t pos0, double theta, RopeStyle style,
          const float* inv_freq) {
  if (style == RopeStyle::none) return;
  // Same arithmetic as apply_rope (sim/base/rope.h), with each position's cos/sin computed once for all
  // heads instead of once per head: bit-identical to ref.
  const int64_t half = D / 2;
#pragma omp parallel if (T > 1)
  {
    std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
#pragma omp for
    for (int64_t t = 0; t < T; ++t) {
      const double pos = static_cast<double>(pos0 + t);
      for (int64_t i = 0; i < half; ++i) {
        const double f = inv_freq ? static_cast<double>(inv_freq[i])
                                  : std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(D));
        cs[static_cast<size_t>(i)] = static_cast<float>(std::cos(pos * f));
        sn[static_cast<size_t>(i)] = static_cast<float>(std::sin(pos * f));
      }
      for (int64_t h = 0; h < n_heads; ++h) {
        float* row = x + (t * n_heads + h) * D;
        for (int64_t i = 0; i < half; ++i) {
          const int64_t i0 = style == RopeStyle::interleaved ? 2 * i : i;
          const int64_t i1 = style == RopeStyle::interleaved ? 2 * i + 1 : i + half;
          const float c = cs[static_cast<size_t>(i)], s = sn[static_cast<size_t>(i)];
          const float x0 = row[i0], x1 = row[i1];
          row[i0] = x0 * c - x1 * s;
          row[i1] = x0 * s + x1 * c;
        }
      }
    }
  }
}

void softmax(float* x, int64_t n) { ref::softmax(x, n); }

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void attention(const float* q, const KvView* kv, float* o, int64_t T, int64_t H, int64_t Hkv, int64_t D, int64_t pos0) {
  const int64_t G = H / Hkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  int64_t max_n = 0;
  for (int64_t g = 0; g < Hkv; ++g) max_n = std::max(max_n, kv[g].n);
  [[maybe_unused]] const int64_t work = T * H * max_n * D;  // read by the pragma only
#pragma omp parallel if (work > 32768)
  {
    std::vector<float> w(static_cast<size_t>(max_n));
    std::vector<int64_t> idx(static_cast<size_t>(max_n));
#pragma omp for collapse(2) schedule(dynamic, 4)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const KvView& c = kv[h / G];
        const float* qr = q + (t * H + h) * D;
        float* orow = o + (t * H + h) * D;
        const int64_t p = pos0 + t;
        // only the visible slots enter the softmax (the others have weight exactly 0 in ref)
        int64_t m = 0;
        for (int64_t s = 0; s < c.n; ++s) {
          if (c.pos[s] > p) continue;
          const float* kr = c.k + s * D;
          float dot = 0.0f;
          for (int64_t d = 0; d < D; ++d) dot += qr[d] * kr[d];
          w[static_cast<size_t>(m)] = dot * scale + (c.bias ? c.bias[s] : 0.0f);
          idx[static_cast<size_t>(m++)] = s;
        }
        ref::softmax(w.data(), m);
        for (int64_t d = 0; d < D; ++d) orow[d] = 0.0f;
        for (int64_t j = 0; j < m; ++j) {
          const float ps = w[static_cast<size_t>(j)];
          const float* vr = c.v + idx[static_cast<size_t>(j)] * D;
          for (int64_t d = 0; d < D; ++d) orow[d] += ps * vr[d];
        }
      }
  }
}

int64_t argmax(const float* x, int64_t n) { return ref::argmax(x, n); }

}  // namespace kvsim::omp
