// shadowkv (sim/strategies/shadowkv.cpp) on a layer small enough to follow by hand: the low-rank
// keys, outlier chunks, the chunk each head reads, bytes and read_bytes, and the refusals; and the
// Jacobi eigen-decomposition it rests on (sim/base/sym_eigen.h).
#include <doctest/doctest.h>

#include <cmath>
#include <set>
#include <string>

#include "sim/base/error.h"
#include "sim/base/sym_eigen.h"
#include "sim/instance.h"
#include "tests/sim_test_util.h"

using namespace kvsim;
using test::Layer;

TEST_CASE("sym_eigen: a 2x2 by hand and a 5x5 by its residual") {
  std::vector<double> a = {2, 1, 1, 2}, w, v;
  sym_eigen(a, 2, w, v);  // eigenvalues 3, 1; eigenvectors (1, 1)/√2, (1, -1)/√2 up to sign
  CHECK(w[0] == doctest::Approx(3.0).epsilon(1e-14));
  CHECK(w[1] == doctest::Approx(1.0).epsilon(1e-14));
  CHECK(std::fabs(v[0 * 2 + 0] * v[1 * 2 + 0] - 0.5) < 1e-14);
  CHECK(std::fabs(v[0 * 2 + 1] * v[1 * 2 + 1] + 0.5) < 1e-14);
  // A symmetric matrix from a fixed integer pattern: |M v_i - w_i v_i| is rounding.
  const int64_t n = 5;
  std::vector<double> m(n * n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) m[i * n + j] = m[j * n + i] = double((i * 7 + j * 11 + 3) % 13) - 6.0;
  std::vector<double> a2 = m;
  sym_eigen(a2, n, w, v);
  for (int64_t i = 0; i < n; ++i) {
    if (i > 0) CHECK(w[i] <= w[i - 1]);
    for (int64_t r = 0; r < n; ++r) {
      double mv = 0;
      for (int64_t c = 0; c < n; ++c) mv += m[r * n + c] * v[c * n + i];
      CHECK(std::fabs(mv - w[i] * v[r * n + i]) < 1e-12);
    }
  }
}

TEST_CASE("shadowkv: rank-1 keys, outlier chunks and one landmark chunk per head, by hand") {
  // Hkv = 2, G = 1, D = 2, P = 8, no RoPE (k_pre = k). budget 2, chunk 2, local 1, outliers 1:
  // n_c = 8/2 - 1 = 3 chunks (positions 0..5), local 6, 7. Head 0 keys (x, 0), x = 1 1 | 2 -1 | 3 3
  // | 1 2; head 1 keys (0, y), y = .5 .5 | .5 .5 | -.5 -.5 | .5 .5. Σxy = 0, so AᵀA = diag(30, 0,
  // 0, 2): rank 1 keeps head 0's keys exactly and rebuilds head 1's as 0.
  // Head 0: chunk 1 (2, -1) has min cos -1 to its landmark: the outlier; landmarks (1,0), (3,0);
  // q = (1, 0) picks chunk 2 (positions 4, 5). Head 1: every chunk has min cos 1, the outlier is
  // the lowest, chunk 0; landmarks (0,.5), (0,-.5); q = (0, 1) picks chunk 1 (positions 2, 3).
  Layer L(2, 2, 10, 2);
  const float x[10] = {1, 1, 2, -1, 3, 3, 1, 2, 1, 1}, y[10] = {.5f, .5f, .5f, .5f, -.5f, -.5f, .5f, .5f, .5f, .5f};
  for (int64_t t = 0; t < 10; ++t) {
    L.K(0, t, 0) = x[t], L.K(1, t, 1) = y[t];
    L.V(0, t, 0) = L.V(1, t, 0) = float(t);
    L.Q(0, t, 0) = 1, L.Q(1, t, 1) = 1;
  }
  LayerView lv = L.view();
  lv.k_pre = L.k.data();  // rope_style none
  auto s = make_strategy("shadowkv:budget=2,rank=1,chunk=2,outliers=1,local=1");
  CHECK(s->layer_coupled());
  Instance inst(*s, make_context(*s, ModelShape{1, 2, 2, 2}, 0, 0, 10, 8, Protocol::sparse));
  inst.prefill_from(lv);
  int steps = 0;
  for (int64_t t = 8; t < 10; ++t)
    inst.step(lv, t, kernels(Backend::ref).attend_slots, [&](const Instance& in, int64_t step) {
      ++steps;
      std::set<int32_t> h0 = {2, 3, 6, 7, 4, 5}, h1 = {0, 1, 6, 7, 2, 3};
      for (int64_t p = 8; p <= step; ++p) h0.insert(int32_t(p)), h1.insert(int32_t(p));
      CHECK(test::positions(in.attended(0, 0)) == h0);
      CHECK(test::positions(in.attended(1, 0)) == h1);
      for (int64_t c = 0; c < 2; ++c) {
        const SlotCache& r = in.attended(c, 0);
        for (int64_t i = 0; i < r.size(); ++i) {
          const bool rebuilt = c == 0 ? (r.pos(i) == 4 || r.pos(i) == 5) : (r.pos(i) == 2 || r.pos(i) == 3);
          CHECK(r.exact(i) == !rebuilt);
          if (rebuilt && c == 0) CHECK((r.key(i)[0] == doctest::Approx(3.0) && std::fabs(r.key(i)[1]) < 1e-6));
          if (rebuilt && c == 1) CHECK((std::fabs(r.key(i)[0]) < 1e-6 && std::fabs(r.key(i)[1]) < 1e-6));
        }
        // bytes: (t+1)·4·D = 8 per token, + U_r share 2·P·r/Hkv = 8 + (ΣVᵀ)_h 2·r·D = 4 + the 2
        // landmarks at 2·D + 4 = 8, - the fp16 keys of the landmark chunks 2·D·chunk·2 = 16.
        CHECK(in.bytes(c) == 8.0 * double(step + 1) + 8 + 4 + 16 - 16);
        // read: the exact tokens (outlier 2 + local 2 + decode) at 8, the landmarks 16, (ΣVᵀ)_h 4,
        // the chunk's 2 tokens at U_r row 2·r + value 2·D = 6.
        CHECK(in.read_bytes(c) == 8.0 * double(4 + step - 8 + 1) + 16 + 4 + 12);
      }
    });
  CHECK(steps == 2);
}

TEST_CASE("shadowkv: refuses settings the prompt cannot hold, and codecs, in one line") {
  auto err = [](const std::string& spec, int64_t P) {
    try {
      auto s = make_strategy(spec);
      check_fits(*s, ModelShape{1, 2, 2, 2}, 10, P, Protocol::sparse);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(err("shadowkv:budget=2,rank=1,chunk=2,outliers=1,local=1", 8) == "no error");
  CHECK(err("shadowkv", 8).find("rank = 160 exceeds min(P, Hkv·D) = 4") != std::string::npos);
  CHECK(err("shadowkv", 8).find("P > 4096") != std::string::npos);
  CHECK(err("shadowkv:budget=3,chunk=2", 8).find("budget = 3 must be a positive multiple of chunk = 2") !=
        std::string::npos);
  CHECK(err("shadowkv:budget=6,rank=1,chunk=2,outliers=1,local=1", 8)
            .find("n_c = P/chunk - local = 3 chunks leave fewer than budget/chunk = 3 landmarks") != std::string::npos);
  CHECK(err("shadowkv:budget=2,rank=1,chunk=2,outliers=1,local=1+quant:bits=8,group=2", 8).find("not modelled") !=
        std::string::npos);
}
