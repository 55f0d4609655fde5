// Forward-pass kernels: sim/omp against sim/ref on awkward sizes, and ref against hand-computed
// values on cases small enough to do on paper.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "model_test_util.h"
#include "sim/kernels/forward_ops.h"
#include "sim/kernels/forward_ops.h"

using namespace kvsim;

namespace {
std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}
}  // namespace

TEST_CASE("forward_ops: ref matmul and attention on hand-computed cases") {
  // y = x W^T + b with x = [1, 2], W = [[1, 0], [3, -1], [0.5, 0.5]], b = [0, 1, -1]: y = [1, 2, 0.5]
  const float x[2] = {1, 2}, w[6] = {1, 0, 3, -1, 0.5f, 0.5f}, b[3] = {0, 1, -1};
  float y[3];
  ref::matmul(x, w, b, y, 1, 2, 3);
  CHECK(y[0] == 1.0f);
  CHECK(y[1] == 2.0f);
  CHECK(y[2] == 0.5f);

  // One head, D = 4, two slots. q.k0 = 0, q.k1 = 2, /sqrt(4) -> logits 0, 1; with bias [ln 3, 0]
  // the logits are ln 3 and 1, so P = [3, e] / (3 + e). The query at position 0 sees only slot 0.
  const float q[8] = {1, 1, 0, 0, 1, 1, 0, 0};  // [T=2, H=1, D=4]
  const float k[8] = {0, 0, 5, 5, 1, 1, 0, 0};
  const float v[8] = {1, 0, 0, 0, 0, 1, 0, 0};
  const float bias[2] = {std::log(3.0f), 0.0f};
  const int64_t pos[2] = {0, 1};
  KvView kv{k, v, bias, pos, 2};
  float o[8];
  ref::attention(q, &kv, o, 2, 1, 1, 4, 0);
  CHECK(o[0] == doctest::Approx(1.0));  // position 0: only slot 0 visible
  CHECK(o[1] == doctest::Approx(0.0));
  const double e = std::exp(1.0);
  CHECK(o[4] == doctest::Approx(3.0 / (3.0 + e)));
  CHECK(o[5] == doctest::Approx(e / (3.0 + e)));

  // rmsnorm of [3, 4] with g = [1, 2]: rms = sqrt(12.5), y = [3, 8] / sqrt(12.5 + eps)
  const float xr[2] = {3, 4}, g[2] = {1, 2};
  float yr[2];
  ref::rmsnorm(xr, g, yr, 1, 2, 0.0f);
  CHECK(yr[0] == doctest::Approx(3.0 / std::sqrt(12.5)));
  CHECK(yr[1] == doctest::Approx(8.0 / std::sqrt(12.5)));

  // swiglu: silu(0) * 5 = 0, silu(2) * 1 = 2 / (1 + e^-2)
  const float gate[2] = {0, 2}, up[2] = {5, 1};
  float sw[2];
  ref::swiglu(gate, up, sw, 2);
  CHECK(sw[0] == 0.0f);
  CHECK(sw[1] == doctest::Approx(2.0 / (1.0 + std::exp(-2.0))));
}

TEST_CASE("forward_ops: omp matches ref (seeds 1..4, sizes 1, 31, 33, 97)") {
  uint64_t seed = 1;
  for (int64_t T : {1, 31, 33, 97}) {
    CAPTURE(T);
    const int64_t K = 67, N = 45;
    auto x = randn(static_cast<size_t>(T * K), seed), w = randn(static_cast<size_t>(N * K), seed + 100),
         b = randn(static_cast<size_t>(N), seed + 200);
    std::vector<float> y0(static_cast<size_t>(T * N)), y1(y0.size());
    ref::matmul(x.data(), w.data(), b.data(), y0.data(), T, K, N);
    omp::matmul(x.data(), w.data(), b.data(), y1.data(), T, K, N);
    // sgemm sums in a different order: fp32 rounding of a 67-term dot product of N(0,1) values
    kvsim_test::check_close(y1.data(), y0.data(), T * N, 1e-4, 1e-5, "matmul");

    std::vector<float> g = randn(static_cast<size_t>(K), seed + 300), r0(x.size()), r1(x.size());
    ref::rmsnorm(x.data(), g.data(), r0.data(), T, K, 1e-5f);
    omp::rmsnorm(x.data(), g.data(), r1.data(), T, K, 1e-5f);
    kvsim_test::check_close(r1.data(), r0.data(), T * K, 0, 0, "rmsnorm (same loop, exact)");

    for (RopeStyle style : {RopeStyle::interleaved, RopeStyle::half}) {
      std::vector<float> a = randn(static_cast<size_t>(T * 5 * 16), seed + 800), b2 = a;
      std::vector<float> inv(8);
      for (size_t i = 0; i < inv.size(); ++i) inv[i] = 1.0f / static_cast<float>(1 + 3 * i);
      ref::rope(a.data(), T, 5, 16, 300, 10000.0, style, nullptr);
      omp::rope(b2.data(), T, 5, 16, 300, 10000.0, style, nullptr);
      kvsim_test::check_close(b2.data(), a.data(), T * 5 * 16, 0, 0, "rope (same arithmetic, exact)");
      ref::rope(a.data(), T, 5, 16, 7, 500000.0, style, inv.data());
      omp::rope(b2.data(), T, 5, 16, 7, 500000.0, style, inv.data());
      kvsim_test::check_close(b2.data(), a.data(), T * 5 * 16, 0, 0, "rope with inv_freq (exact)");
    }

    // GQA attention: H = 6, Hkv = 2, D = 12, a cache of 5 earlier tokens plus the T new ones,
    // with a bias on every slot and slot positions out of order.
    const int64_t H = 6, Hkv = 2, D = 12, n = T + 5, pos0 = 5;
    auto q = randn(static_cast<size_t>(T * H * D), seed + 400, 2.0f);
    std::vector<std::vector<float>> ks, vs, bs;
    std::vector<std::vector<int64_t>> ps;
    std::vector<KvView> views;
    for (int64_t gi = 0; gi < Hkv; ++gi) {
      ks.push_back(randn(static_cast<size_t>(n * D), seed + 500 + static_cast<uint64_t>(gi), 2.0f));
      vs.push_back(randn(static_cast<size_t>(n * D), seed + 600 + static_cast<uint64_t>(gi)));
      bs.push_back(randn(static_cast<size_t>(n), seed + 700 + static_cast<uint64_t>(gi)));
      std::vector<int64_t> p(static_cast<size_t>(n));
      for (int64_t s = 0; s < n; ++s) p[static_cast<size_t>(s)] = (s * 7) % n;
      ps.push_back(p);
    }
    for (int64_t gi = 0; gi < Hkv; ++gi)
      views.push_back(KvView{ks[static_cast<size_t>(gi)].data(), vs[static_cast<size_t>(gi)].data(),
                             bs[static_cast<size_t>(gi)].data(), ps[static_cast<size_t>(gi)].data(), n});
    std::vector<float> o0(q.size()), o1(q.size());
    ref::attention(q.data(), views.data(), o0.data(), T, H, Hkv, D, pos0);
    omp::attention(q.data(), views.data(), o1.data(), T, H, Hkv, D, pos0);
    kvsim_test::check_close(o1.data(), o0.data(), T * H * D, 0, 0, "attention (same loop order, exact)");
    ++seed;
  }
}

TEST_CASE("forward_ops: softmax of huge negative logits and all-equal scores") {
  float a[4] = {-1e30f, -1e30f, -1e30f, -1e30f};
  ref::softmax(a, 4);
  for (float x : a) CHECK(x == doctest::Approx(0.25));
  float b[3] = {-INFINITY, 0.0f, -INFINITY};
  ref::softmax(b, 3);
  CHECK(b[0] == 0.0f);
  CHECK(b[1] == 1.0f);
  float c[2] = {-INFINITY, -INFINITY};  // nothing visible: all zero, not NaN
  ref::softmax(c, 2);
  CHECK(c[0] == 0.0f);
  CHECK(c[1] == 0.0f);
}
