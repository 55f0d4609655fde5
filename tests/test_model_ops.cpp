// Forward-pass kernels: ref against hand-computed values on cases small enough to do on paper.
// omp and cuda against ref on awkward sizes: the harness, tests/test_backend_forward.cpp.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "sim/kernels/forward_ops.h"

using namespace kvsim;

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
