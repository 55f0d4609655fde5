// Forward-pass ops (sim/kernels/forward_ops.h; the GPU's in cuda/forward_ops.h), the harness's
// family (tests/backend_harness.h): one case list per op, every case on omp, cuda-host and cuda
// against ref; each op is a subcase, its cases named by INFO. An op a target has no kernel of its
// own for is noted and not compared (target_kernels). The tolerances differ per target: omp runs
// ref's loops (exact) except matmul (OpenBLAS); the GPU kernels and their emulation reduce in
// trees (rmsnorm's sum of squares, attention's softmax denominator); the device's expf, cos/sin
// and pow differ from glibc's by an ulp or two.
#include <doctest/doctest.h>

#include <cmath>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "tests/backend_harness.h"
#include "tests/cuda_forward_test_util.h"

using namespace kvsim;
using kvsim_test::cuda_fwd::AttnCase;
using kvsim_test::cuda_fwd::randn;
using test::kBitExact;
using test::Target;
using test::TargetTol;
using test::Tol;

namespace {

// Whether the target has a kernel of its own for the op; otherwise a note, and nothing compared.
template <class F>
bool has_op(F* fn, const char* op, Target t) {
  static std::set<std::string> noted;  // once, not at every re-entry of the case for a subcase
  if (!fn && noted.insert(std::string(test::target_name(t)) + op).second)
    MESSAGE(std::string(op) << ": no kernel of its own on " << std::string(test::target_name(t)) << ", not compared");
  return fn != nullptr;
}

// ---- matmul: y = x W^T + b -----------------------------------------------------------------------

struct MatmulCase {
  std::string name;
  int64_t T, K, N;
  bool bias;
  uint64_t seed;
};
// SGEMM (OpenBLAS, cuBLAS in FP32 with TF32 off) sums in another order than ref's loop: the fp32
// rounding of a 67-term dot product of N(0, 1) values.
constexpr TargetTol kMatmulTol{{1e-4, 1e-5}, {}, {1e-4, 1e-5}};

std::vector<MatmulCase> matmul_cases() {
  std::vector<MatmulCase> cs;
  uint64_t seed = 1;
  for (int64_t T : {1, 31, 33, 97})
    cs.push_back({"T" + std::to_string(T) + "_seed" + std::to_string(seed), T, 67, 45, true, seed++});
  cs.push_back({"T33_no_bias_seed5", 33, 67, 45, false, 5});
  return cs;
}

void check_matmul(const Kernels& k, Target t) {
  for (const auto& c : matmul_cases()) {
    {
      INFO(c.name);
      auto x = randn(static_cast<size_t>(c.T * c.K), c.seed), w = randn(static_cast<size_t>(c.N * c.K), c.seed + 100),
           b = randn(static_cast<size_t>(c.N), c.seed + 200);
      std::vector<float> y0(static_cast<size_t>(c.T * c.N)), y1(y0.size(), NAN);
      ref::matmul(x.data(), w.data(), c.bias ? b.data() : nullptr, y0.data(), c.T, c.K, c.N);
      k.matmul(x.data(), w.data(), c.bias ? b.data() : nullptr, y1.data(), c.T, c.K, c.N);
      test::check_close("matmul", y1, y0, kMatmulTol[t]);
    }
  }
}

// ---- rmsnorm ------------------------------------------------------------------------------------

// The tree adds the sum of squares in another order than ref's sequential loop: that sum's relative
// rounding grows like sqrt(n) u (u = 6e-8), the square root halves it, and x * scale * g rounds
// twice more; a factor 2 of margin over that. omp runs ref's loop per row: exact.
TargetTol rmsnorm_tol(int64_t n) {
  const Tol tree{1e-7, 4e-7 + 6e-8 * std::sqrt(static_cast<double>(n))};
  return {kBitExact, tree, tree};
}

void check_rmsnorm(const Kernels& k, Target t) {
  uint64_t seed = 1;
  for (int64_t T : {1, 31, 33, 97})
    for (int64_t n : {67, 4097}) {
      const uint64_t s = seed++;
      {
        INFO("T" << T << "_n" << n << "_seed" << s);
        auto x = randn(static_cast<size_t>(T * n), s, 3.0f), g = randn(static_cast<size_t>(n), s + 100);
        std::vector<float> y0(x.size()), y1(x.size(), NAN);
        ref::rmsnorm(x.data(), g.data(), y0.data(), T, n, 1e-5f);
        k.rmsnorm(x.data(), g.data(), y1.data(), T, n, 1e-5f);
        test::check_close("rmsnorm", y1, y0, rmsnorm_tol(n)[t]);
      }
    }
}

// ---- rope ---------------------------------------------------------------------------------------

// omp and the emulation: the same double angle and the same float rotation as ref, exact. The
// device's double pow/cos/sin are within 2 ulp of glibc's: cos and sin may round to floats an ulp
// apart, moving each rotated element by ~1 ulp of |x|.
constexpr TargetTol kRopeTol{kBitExact, kBitExact, {1e-6, 1e-6}};

void check_rope(const Kernels& k, Target t) {
  struct Variant {
    const char* name;
    int64_t pos0;
    double theta;
    bool inv_freq;
  };
  const Variant variants[] = {{"pos300_theta1e4", 300, 10000.0, false},
                              {"pos7_inv_freq", 7, 500000.0, true},
                              {"pos300_inv_freq", 300, 10000.0, true}};
  const std::pair<RopeStyle, const char*> styles[] = {
      {RopeStyle::interleaved, "interleaved"}, {RopeStyle::half, "half"}, {RopeStyle::none, "none"}};
  uint64_t seed = 10;
  for (int64_t T : {1, 31, 33, 97})
    for (int64_t D : {16, 130})  // D = 130: more pairs than a warp
      for (const auto& [style, style_name] : styles)
        for (const Variant& v : variants) {
          const uint64_t s = seed++;
          const std::string name = "T" + std::to_string(T) + "_D" + std::to_string(D) + "_" + style_name + "_" +
                                   v.name + "_seed" + std::to_string(s);
          {
            INFO(name);
            const int64_t heads = 5;
            std::vector<float> a = randn(static_cast<size_t>(T * heads * D), s), b = a;
            std::vector<float> inv(static_cast<size_t>(D / 2));
            for (size_t i = 0; i < inv.size(); ++i) inv[i] = 1.0f / static_cast<float>(1 + 3 * i);
            const float* f = v.inv_freq ? inv.data() : nullptr;
            ref::rope(a.data(), T, heads, D, v.pos0, v.theta, style, f);
            k.rope(b.data(), T, heads, D, v.pos0, v.theta, style, f);
            test::check_close("rope", b, a, kRopeTol[t]);
          }
        }
}

// ---- swiglu -------------------------------------------------------------------------------------

// The same expression on every target; the device's expf is within 2 ulp of glibc's.
constexpr TargetTol kSwigluTol{kBitExact, kBitExact, {1e-7, 1e-6}};

void check_swiglu(const Kernels& k, Target t) {
  struct Case {
    std::string name;
    int64_t n;
    float scale;
    uint64_t seed;
  };
  std::vector<Case> cases = {{"n4097_gate_to_90_seed20", 4097, 30.0f, 20}};
  for (int64_t T : {1, 31, 33, 97})
    cases.push_back(
        {"n" + std::to_string(33 * T) + "_seed" + std::to_string(900 + T), 33 * T, 4.0f, 900 + uint64_t(T)});
  for (const auto& c : cases) {
    {
      INFO(c.name);
      auto gate = randn(static_cast<size_t>(c.n), c.seed, c.scale), up = randn(gate.size(), c.seed + 1);
      if (c.n > 3) gate[0] = -90.0f, gate[1] = 90.0f, gate[2] = 0.0f;  // e^90 overflows to inf: silu -> -0, as ref
      std::vector<float> y0(gate.size()), y1(gate.size(), NAN);
      ref::swiglu(gate.data(), up.data(), y0.data(), c.n);
      k.swiglu(gate.data(), up.data(), y1.data(), c.n);
      test::check_close("swiglu", y1, y0, kSwigluTol[t]);
    }
  }
}

// ---- attention ----------------------------------------------------------------------------------

struct AttentionCase {
  std::string name;
  AttnCase data;
  TargetTol tol;
};

// omp runs ref's loops in ref's order: exact. The emulation and the device compute logits, max and
// the weighted sums in ref's order; only the softmax denominator is added in a tree, so each weight
// is off by the relative rounding of an n-term sum of values in (0, 1] (~sqrt(n) u), and so is
// every output; the device adds its expf (<= 2 ulp, glibc's < 1 ulp) to every weight.
constexpr TargetTol kAttnTol{kBitExact, {1e-6, 1e-5}, {1e-6, 2e-5}};

std::vector<AttentionCase> attention_cases() {
  std::vector<AttentionCase> cs;
  uint64_t seed = 30;
  for (int64_t T : {1, 31, 33, 97})
    for (bool with_bias : {false, true})  // bias: out-of-order slot positions too
      for (int64_t D : {12, 130}) {       // D = 130: more output dimensions than threads
        const int64_t H = 6, Hkv = 2, pos0 = 5;
        cs.push_back({"T" + std::to_string(T) + (with_bias ? "_bias" : "") + "_D" + std::to_string(D) + "_seed" +
                          std::to_string(seed),
                      AttnCase(T, H, Hkv, D, pos0 + T, pos0, with_bias, seed), kAttnTol});
        seed += 10;
      }
  // The query at position 2 sees no slot (positions 3..): all-zero output, as ref.
  AttnCase none(1, 4, 1, 8, 5, 2, true, 40);
  for (auto& p : none.pos) p += 3;  // the views point into none.pos
  cs.push_back({"nothing_visible_seed40", none, {kBitExact, kBitExact, kAttnTol.cuda}});
  // Huge negative equal biases swamp the dot products: uniform weights over the visible slots.
  AttnCase eq(3, 2, 2, 8, 9, 6, true, 50);
  for (auto& b : eq.bias) b = -1e30f;
  cs.push_back({"all_equal_scores_seed50", eq, kAttnTol});
  // 4097 slots, 32 query heads on 8 KV heads, D = 128 (llama3 widths): every lane strides many
  // slots. ref adds 4097 exponentials one by one onto a growing sum: small terms onto a large
  // accumulator round with a bias, up to ~n u / 2 = 1.2e-4 relative, which every weight inherits;
  // the tree's partials stay comparable in size (test_cuda_forward.cpp checks which is closer to
  // the exact answer). The device adds its expf.
  cs.push_back(
      {"n4097_llama3_seed60", AttnCase(2, 32, 8, 128, 4097, 4095, false, 60), {kBitExact, {1e-6, 1e-4}, {1e-6, 2e-4}}});
  return cs;
}

void check_attention(const Kernels& k, Target t) {
  for (auto& c : attention_cases()) {
    {
      INFO(c.name);
      AttnCase& a = c.data;
      for (int64_t g = 0; g < a.Hkv; ++g) a.views[static_cast<size_t>(g)] = a.view(g);  // after the copy
      std::vector<float> o0(a.q.size()), o1(a.q.size(), NAN);
      ref::attention(a.q.data(), a.views.data(), o0.data(), a.T, a.H, a.Hkv, a.D, a.pos0);
      k.attention(a.q.data(), a.views.data(), o1.data(), a.T, a.H, a.Hkv, a.D, a.pos0);
      test::check_close("attention", o1, o0, c.tol[t]);
    }
  }
}

// ---- argmax: exact everywhere, ties to the lowest index -------------------------------------------

void check_argmax(const Kernels& k, Target) {
  for (int64_t n : {1, 31, 33, 41, 97, 1024, 1025, 1271, 1353, 3977, 4097}) {
    {
      INFO("n" << n << "_seed" << 70 + n);
      auto x = randn(static_cast<size_t>(n), 70 + static_cast<uint64_t>(n));
      CHECK(k.argmax(x.data(), n) == ref::argmax(x.data(), n));
      std::vector<float> same(static_cast<size_t>(n), 0.5f);  // all equal: index 0
      CHECK(k.argmax(same.data(), n) == 0);
      if (n > 3) {  // two equal maxima in different lanes: the lower index
        x[static_cast<size_t>(n - 1)] = 100.0f, x[static_cast<size_t>(n / 3)] = 100.0f;
        CHECK(ref::argmax(x.data(), n) == n / 3);
        CHECK(k.argmax(x.data(), n) == n / 3);
      }
    }
  }
}

void check_forward(Target t) {
  const Kernels& k = test::target_kernels(t);
  if (has_op(k.matmul, "matmul", t)) SUBCASE("matmul") {
      check_matmul(k, t);
    }
  if (has_op(k.rmsnorm, "rmsnorm", t)) SUBCASE("rmsnorm") {
      check_rmsnorm(k, t);
    }
  if (has_op(k.rope, "rope", t)) SUBCASE("rope") {
      check_rope(k, t);
    }
  if (has_op(k.swiglu, "swiglu", t)) SUBCASE("swiglu") {
      check_swiglu(k, t);
    }
  if (has_op(k.attention, "attention", t)) SUBCASE("attention") {
      check_attention(k, t);
    }
  if (has_op(k.argmax, "argmax", t)) SUBCASE("argmax") {
      check_argmax(k, t);
    }
  has_op(k.softmax, "softmax", t);  // ref's hand cases: test_model_ops.cpp
}

}  // namespace

KVSIM_BACKEND_TEST_CASES("forward ops vs ref on the harness cases", check_forward)
