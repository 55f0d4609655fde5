#include "sim/kernels/forward_ops.h"

#include <cmath>
#include <limits>
#include <vector>

namespace kvsim::ref {

void matmul(const float* x, const float* w, const float* b, float* y, int64_t T, int64_t K, int64_t N) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      float acc = b ? b[n] : 0.0f;
      const float* xr = x + t * K;
      const float* wr = w + n * K;
      for (int64_t k = 0; k < K; ++k) acc += xr[k] * wr[k];
      y[t * N + n] = acc;
    }
}

void rmsnorm(const float* x, const float* g, float* y, int64_t T, int64_t n, float eps) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * n;
    float ss = 0.0f;
    for (int64_t i = 0; i < n; ++i) ss += xr[i] * xr[i];
    const float scale = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
    for (int64_t i = 0; i < n; ++i) y[t * n + i] = xr[i] * scale * g[i];
  }
}

void rope(float* x, int64_t T, int64_t n_heads, int64_t D, int64_t pos0, double theta, RopeStyle style,
          const float* inv_freq) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < n_heads; ++h) apply_rope(x + (t * n_heads + h) * D, 1, D, pos0 + t, theta, style, inv_freq);
}

void softmax(float* x, int64_t n) {
  if (n <= 0) return;
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  if (mx == -std::numeric_limits<float>::infinity()) {  // nothing visible: all weights zero
    for (int64_t i = 0; i < n; ++i) x[i] = 0.0f;
    return;
  }
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  for (int64_t i = 0; i < n; ++i) x[i] /= sum;
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void attention(const float* q, const KvView* kv, float* o, int64_t T, int64_t H, int64_t Hkv, int64_t D, int64_t pos0) {
  const int64_t G = H / Hkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::vector<float> w;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const KvView& c = kv[h / G];
      const float* qr = q + (t * H + h) * D;
      float* orow = o + (t * H + h) * D;
      w.assign(static_cast<size_t>(c.n), -std::numeric_limits<float>::infinity());
      for (int64_t s = 0; s < c.n; ++s) {
        if (c.pos[s] > pos0 + t) continue;
        float dot = 0.0f;
        for (int64_t d = 0; d < D; ++d) dot += qr[d] * c.k[s * D + d];
        w[static_cast<size_t>(s)] = dot * scale + (c.bias ? c.bias[s] : 0.0f);
      }
      softmax(w.data(), c.n);
      for (int64_t d = 0; d < D; ++d) orow[d] = 0.0f;
      for (int64_t s = 0; s < c.n; ++s) {
        const float p = w[static_cast<size_t>(s)];
        if (p == 0.0f) continue;
        for (int64_t d = 0; d < D; ++d) orow[d] += p * c.v[s * D + d];
      }
    }
}

int64_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

}  // namespace kvsim::ref
