// The GPU forward pass (cuda/forward_ops, cuda/forward_runner) against sim/ref/forward_ops.
//   "cuda-host: ..." cases run everywhere: the kernels' arithmetic (cuda/forward_core.h) on the CPU,
//     with each kernel's thread mapping and reduction tree emulated lane by lane.
//   "cuda: ..." cases need a device (kvsim::test::cuda_device_or_skip()): each device op against
//     ref, the GPU runner's greedy decode of stories260K against the oracle, a GPU record of it
//     against a CPU record.
// Tolerances are |x - ref| <= atol + rtol |ref|; exact (0, 0) where the arithmetic is the same.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "cuda/forward_core.h"
#include "cuda/forward_ops.h"
#include "cuda_test_util.h"
#include "model_test_util.h"
#include "sim/error.h"
#include "sim/ref/forward_ops.h"
#include "traces/model/model.h"
#include "traces/model/recorder.h"
#include "traces/model/runner.h"
#include "traces/model/sampler.h"
#include "traces/model/tokenizer.h"
#include "traces/reader.h"

using namespace kvsim;
namespace core = kvsim::cuda::core;

namespace {

std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// check_close, and a line with the largest deviation seen (the numbers the tolerances rest on).
void close(const float* x, const float* ref, int64_t n, double atol, double rtol, const char* what) {
  double max_abs = 0, max_rel = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = std::abs(static_cast<double>(x[i]) - ref[i]);
    max_abs = std::max(max_abs, d);
    if (ref[i] != 0) max_rel = std::max(max_rel, d / std::abs(static_cast<double>(ref[i])));
  }
  MESSAGE(std::string(what) << ": max |diff| " << max_abs << ", max rel " << max_rel << " (atol " << atol << ", rtol " << rtol << ")");
  kvsim_test::check_close(x, ref, n, atol, rtol, what);
}

// The kernels' block reductions: lanes' strided partials, then the tree (cuda/forward_ops.cu).
void emulate_tree_sum(std::vector<float>& red) {
  for (int half = static_cast<int>(red.size()) / 2; half > 0; half /= 2)
    for (int lane = 0; lane < half; ++lane) core::tree_step_sum(red.data(), lane, half);
}
void emulate_tree_max(std::vector<float>& red) {
  for (int half = static_cast<int>(red.size()) / 2; half > 0; half /= 2)
    for (int lane = 0; lane < half; ++lane) core::tree_step_max(red.data(), lane, half);
}

// rmsnorm_kernel: one block of n_lanes per row.
void emulate_rmsnorm(const float* x, const float* g, float* y, int64_t T, int64_t n, float eps, int n_lanes = core::kRowLanes) {
  for (int64_t t = 0; t < T; ++t) {
    std::vector<float> red(static_cast<size_t>(n_lanes));
    for (int lane = 0; lane < n_lanes; ++lane) red[static_cast<size_t>(lane)] = core::sumsq_strided(x + t * n, n, lane, n_lanes);
    emulate_tree_sum(red);
    const float scale = core::rms_inv(red[0], n, eps);
    for (int64_t i = 0; i < n; ++i) y[t * n + i] = core::rmsnorm_elem(x[t * n + i], scale, g[i]);
  }
}

// rope_kernel: one thread per (row, pair).
void emulate_rope(float* x, int64_t T, int64_t heads, int64_t D, int64_t pos0, double theta, RopeStyle style,
                  const float* inv_freq) {
  const int64_t half = D / 2;
  for (int64_t j = 0; j < T * heads * half; ++j) {
    const int64_t i = j % half, row = j / half, t = row / heads;
    core::rope_pair(x + row * D, i, D, pos0 + t, theta, style, inv_freq);
  }
}

// attention_kernel: one block of n_lanes per (t, h); k, v [Hkv, head_stride / D, D].
void emulate_attention(const float* q, const float* k, const float* v, const float* bias, const int64_t* pos, float* o,
                       int64_t T, int64_t H, int64_t Hkv, int64_t D, int64_t n, int64_t head_stride, int64_t pos0,
                       int n_lanes = core::kAttnLanes) {
  const int64_t G = H / Hkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::vector<float> w(static_cast<size_t>(n)), red(static_cast<size_t>(n_lanes));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / G;
      const float* kh = k + g * head_stride;
      const float* bh = bias ? bias + g * n : nullptr;
      const int64_t* ph = pos ? pos + g * n : nullptr;
      for (int lane = 0; lane < n_lanes; ++lane) {
        float mx = core::kNegInf;
        for (int64_t s = lane; s < n; s += n_lanes) {
          w[static_cast<size_t>(s)] = core::attn_logit(q + (t * H + h) * D, kh, bh, ph, s, D, pos0 + t, scale);
          if (w[static_cast<size_t>(s)] > mx) mx = w[static_cast<size_t>(s)];
        }
        red[static_cast<size_t>(lane)] = mx;
      }
      emulate_tree_max(red);
      const float mx = red[0];
      for (int64_t s = 0; s < n; ++s) w[static_cast<size_t>(s)] = core::attn_exp(w[static_cast<size_t>(s)], mx);
      for (int lane = 0; lane < n_lanes; ++lane) red[static_cast<size_t>(lane)] = core::sum_strided(w.data(), n, lane, n_lanes);
      emulate_tree_sum(red);
      for (int64_t s = 0; s < n; ++s) w[static_cast<size_t>(s)] = core::attn_weight(w[static_cast<size_t>(s)], red[0], mx);
      for (int64_t d = 0; d < D; ++d) o[(t * H + h) * D + d] = core::attn_out_elem(w.data(), v + g * head_stride, n, D, d);
    }
}

// argmax_kernel: one block of n_lanes.
int64_t emulate_argmax(const float* x, int64_t n, int n_lanes = core::kArgmaxLanes) {
  std::vector<int64_t> idx(static_cast<size_t>(n_lanes));
  for (int lane = 0; lane < n_lanes; ++lane) idx[static_cast<size_t>(lane)] = core::argmax_strided(x, n, lane, n_lanes);
  for (int half = n_lanes / 2; half > 0; half /= 2)
    for (int lane = 0; lane < half; ++lane) core::tree_step_argmax(x, idx.data(), lane, half);
  return idx[0];
}

// A GQA cache case: Hkv heads of n slots, each head's rows at stride head_stride (>= n D, as the
// runner's [Hkv, seq_len, D] cache), with or without a bias and out-of-order positions.
struct AttnCase {
  int64_t T, H, Hkv, D, n, head_stride, pos0;
  std::vector<float> q, k, v, bias;
  std::vector<int64_t> pos, full_pos;  // full_pos: 0 .. n-1, what pos == nullptr means
  std::vector<KvView> views;
  AttnCase(int64_t T_, int64_t H_, int64_t Hkv_, int64_t D_, int64_t n_, int64_t pos0_, bool with_bias, uint64_t seed)
      : T(T_), H(H_), Hkv(Hkv_), D(D_), n(n_), head_stride((n_ + 3) * D_), pos0(pos0_) {
    q = randn(static_cast<size_t>(T * H * D), seed, 2.0f);
    k = randn(static_cast<size_t>(Hkv * head_stride), seed + 1, 2.0f);
    v = randn(static_cast<size_t>(Hkv * head_stride), seed + 2);
    if (with_bias) {
      bias = randn(static_cast<size_t>(Hkv * n), seed + 3);
      pos.resize(static_cast<size_t>(Hkv * n));
      for (int64_t g = 0; g < Hkv; ++g)
        for (int64_t s = 0; s < n; ++s) pos[static_cast<size_t>(g * n + s)] = (s * 7 + g) % n;
    }
    full_pos.resize(static_cast<size_t>(n));
    for (int64_t s = 0; s < n; ++s) full_pos[static_cast<size_t>(s)] = s;
    for (int64_t g = 0; g < Hkv; ++g) views.push_back(view(g));
  }
  KvView view(int64_t g) {
    KvView kv;
    kv.k = k.data() + g * head_stride;
    kv.v = v.data() + g * head_stride;
    kv.n = n;
    kv.bias = bias.empty() ? nullptr : bias.data() + g * n;
    kv.pos = pos.empty() ? full_pos.data() : pos.data() + g * n;
    return kv;
  }
  const float* bias_ptr() const { return bias.empty() ? nullptr : bias.data(); }
  const int64_t* pos_ptr() const { return pos.empty() ? nullptr : pos.data(); }
};

}  // namespace

TEST_CASE("cuda-host: rmsnorm, one block of lanes per row and a tree sum, vs ref (seeds 1..8, T 1/31/33/97, n 67/4097)") {
  uint64_t seed = 1;
  for (int64_t T : {1, 31, 33, 97})
    for (int64_t n : {67, 4097}) {
      CAPTURE(T);
      CAPTURE(n);
      auto x = randn(static_cast<size_t>(T * n), seed, 3.0f), g = randn(static_cast<size_t>(n), seed + 100);
      std::vector<float> y0(x.size()), y1(x.size());
      ref::rmsnorm(x.data(), g.data(), y0.data(), T, n, 1e-5f);
      emulate_rmsnorm(x.data(), g.data(), y1.data(), T, n, 1e-5f);
      // only the sum of squares is added in another order (tree vs ref's sequential loop): the
      // sequential sum's relative rounding grows like sqrt(n) u (u = 6e-8), the square root halves
      // it, and x * scale * g rounds twice more; a factor 2 of margin over that
      const double rtol = 4e-7 + 6e-8 * std::sqrt(static_cast<double>(n));
      close(y1.data(), y0.data(), T * n, 1e-7, rtol, "rmsnorm");
      ++seed;
    }
}

TEST_CASE("cuda-host: rope, both styles, theta and inv_freq, pos0 7 and 300, equals ref exactly") {
  uint64_t seed = 10;
  for (int64_t T : {1, 31, 33, 97})
    for (int64_t D : {16, 130})
      for (RopeStyle style : {RopeStyle::interleaved, RopeStyle::half, RopeStyle::none}) {
        CAPTURE(T);
        CAPTURE(D);
        const int64_t heads = 5;
        std::vector<float> a = randn(static_cast<size_t>(T * heads * D), seed++), b = a;
        std::vector<float> inv(static_cast<size_t>(D / 2));
        for (size_t i = 0; i < inv.size(); ++i) inv[i] = 1.0f / static_cast<float>(1 + 3 * i);
        ref::rope(a.data(), T, heads, D, 300, 10000.0, style, nullptr);
        emulate_rope(b.data(), T, heads, D, 300, 10000.0, style, nullptr);
        close(b.data(), a.data(), T * heads * D, 0, 0, "rope (same double angle, same float rotation)");
        ref::rope(a.data(), T, heads, D, 7, 500000.0, style, inv.data());
        emulate_rope(b.data(), T, heads, D, 7, 500000.0, style, inv.data());
        close(b.data(), a.data(), T * heads * D, 0, 0, "rope with inv_freq");
      }
}

TEST_CASE("cuda-host: swiglu equals ref exactly (seed 20, n 4097, |gate| up to 90)") {
  auto gate = randn(4097, 20, 30.0f), up = randn(4097, 21);
  gate[0] = -90.0f, gate[1] = 90.0f, gate[2] = 0.0f;  // e^90 overflows to inf: silu -> -0, as ref
  std::vector<float> y0(gate.size()), y1(gate.size());
  ref::swiglu(gate.data(), up.data(), y0.data(), 4097);
  for (size_t i = 0; i < gate.size(); ++i) y1[i] = core::swiglu_elem(gate[i], up[i]);
  close(y1.data(), y0.data(), 4097, 0, 0, "swiglu (same expression)");
}

TEST_CASE("cuda-host: attention, one block of lanes per (query, head), vs ref (GQA, bias, positions, pos0 > 0)") {
  uint64_t seed = 30;
  for (int64_t T : {1, 31, 33, 97})
    for (bool with_bias : {false, true})
      for (int64_t D : {12, 130}) {  // D = 130: more output dimensions than threads
        CAPTURE(T);
        CAPTURE(with_bias);
        CAPTURE(D);
        const int64_t H = 6, Hkv = 2, pos0 = 5, n = pos0 + T;
        AttnCase c(T, H, Hkv, D, n, pos0, with_bias, seed);
        seed += 10;
        std::vector<float> o0(c.q.size()), o1(c.q.size());
        ref::attention(c.q.data(), c.views.data(), o0.data(), T, H, Hkv, D, pos0);
        emulate_attention(c.q.data(), c.k.data(), c.v.data(), c.bias_ptr(), c.pos_ptr(), o1.data(), T, H, Hkv, D, n,
                          c.head_stride, pos0);
        // logits, max and the weighted sums in ref's order; only the softmax denominator is added
        // in a tree, so each weight is off by the relative rounding of an n-term sum of values in
        // (0, 1] (~sqrt(n) u) and so is every output
        close(o1.data(), o0.data(), T * H * D, 1e-6, 1e-5, "attention");
      }
}

TEST_CASE("cuda-host: attention edge cases: nothing visible, all-equal scores, a cache longer than the lanes") {
  // the query at position 2 sees no slot (positions 3..): all-zero output, as ref
  AttnCase none(1, 4, 1, 8, 5, 2, true, 40);
  for (auto& p : none.pos) p += 3;  // the views point into none.pos
  std::vector<float> o0(none.q.size()), o1(none.q.size(), 1.0f);
  ref::attention(none.q.data(), none.views.data(), o0.data(), 1, 4, 1, 8, 2);
  emulate_attention(none.q.data(), none.k.data(), none.v.data(), none.bias_ptr(), none.pos_ptr(), o1.data(), 1, 4, 1, 8,
                    5, none.head_stride, 2);
  close(o1.data(), o0.data(), 32, 0, 0, "attention with nothing visible");

  // huge negative equal biases swamp the dot products: uniform weights over the visible slots
  AttnCase eq(3, 2, 2, 8, 9, 6, true, 50);
  for (auto& b : eq.bias) b = -1e30f;
  std::vector<float> e0(eq.q.size()), e1(eq.q.size());
  ref::attention(eq.q.data(), eq.views.data(), e0.data(), 3, 2, 2, 8, 6);
  emulate_attention(eq.q.data(), eq.k.data(), eq.v.data(), eq.bias_ptr(), eq.pos_ptr(), e1.data(), 3, 2, 2, 8, 9,
                    eq.head_stride, 6);
  close(e1.data(), e0.data(), 48, 1e-6, 1e-5, "attention, all-equal scores");

  // 4097 slots, 32 query heads on 8 KV heads, D = 128 (llama3 widths): every lane strides many slots
  AttnCase big(2, 32, 8, 128, 4097, 4095, false, 60);
  std::vector<float> b0(big.q.size()), b1(big.q.size());
  ref::attention(big.q.data(), big.views.data(), b0.data(), 2, 32, 8, 128, 4095);
  emulate_attention(big.q.data(), big.k.data(), big.v.data(), nullptr, nullptr, b1.data(), 2, 32, 8, 128, 4097,
                    big.head_stride, 4095);
  // ref adds 4097 exponentials one by one onto a growing sum: small terms onto a large
  // accumulator round with a bias, up to ~n u / 2 = 1.2e-4 relative, which every weight inherits;
  // the tree's partials stay comparable in size
  close(b1.data(), b0.data(), 2 * 32 * 128, 1e-6, 1e-4, "attention over 4097 slots (sum of 4097 weights)");
  // which is the better one: both against the same attention in double precision
  double err_ref = 0, err_emu = 0;
  for (int64_t t = 0; t < 2; ++t)
    for (int64_t h = 0; h < 32; ++h) {
      const KvView& kv = big.views[static_cast<size_t>(h / 4)];
      const float* q = big.q.data() + (t * 32 + h) * 128;
      std::vector<double> w(static_cast<size_t>(4096 + t));
      double mx = -1e300, sum = 0;
      for (size_t s = 0; s < w.size(); ++s) {
        double dot = 0;
        for (int64_t d = 0; d < 128; ++d) dot += double(q[d]) * kv.k[static_cast<int64_t>(s) * 128 + d];
        w[s] = dot / std::sqrt(128.0), mx = std::max(mx, w[s]);
      }
      for (double& x : w) sum += (x = std::exp(x - mx));
      for (int64_t d = 0; d < 128; ++d) {
        double o = 0;
        for (size_t s = 0; s < w.size(); ++s) o += w[s] / sum * kv.v[static_cast<int64_t>(s) * 128 + d];
        const size_t i = static_cast<size_t>((t * 32 + h) * 128 + d);
        err_ref = std::max(err_ref, std::abs(b0[i] - o)), err_emu = std::max(err_emu, std::abs(b1[i] - o));
      }
    }
  MESSAGE("4097 slots vs double: ref max error " << err_ref << ", cuda emulation max error " << err_emu);
  CHECK(err_emu <= err_ref);
}

TEST_CASE("cuda-host: argmax, one block of lanes and a tree, equals ref (ties to the lowest index)") {
  for (int64_t n : {1, 31, 33, 97, 1024, 1025, 4097}) {
    CAPTURE(n);
    auto x = randn(static_cast<size_t>(n), 70 + static_cast<uint64_t>(n));
    CHECK(emulate_argmax(x.data(), n) == ref::argmax(x.data(), n));
    std::vector<float> same(static_cast<size_t>(n), 0.5f);  // all equal: index 0
    CHECK(emulate_argmax(same.data(), n) == 0);
    if (n > 3) {  // two equal maxima in different lanes: the lower index
      x[static_cast<size_t>(n - 1)] = 100.0f, x[static_cast<size_t>(n / 3)] = 100.0f;
      CHECK(emulate_argmax(x.data(), n) == ref::argmax(x.data(), n));
      CHECK(ref::argmax(x.data(), n) == n / 3);
    }
  }
}

// ---- on the device ------------------------------------------------------------------------------

namespace {

template <typename T>
cuda::DeviceArray dev(const std::vector<T>& v) {
  return cuda::DeviceArray::from(v);
}

void device_attention_case(AttnCase& c, const char* what) {
  std::vector<float> o0(c.q.size());
  ref::attention(c.q.data(), c.views.data(), o0.data(), c.T, c.H, c.Hkv, c.D, c.pos0);
  auto q = dev(c.q), k = dev(c.k), v = dev(c.v), o = dev(std::vector<float>(c.q.size()));
  cuda::DeviceArray b, p;
  if (!c.bias.empty()) b = dev(c.bias), p = dev(c.pos);
  cuda::attention(q.as<float>(), k.as<float>(), v.as<float>(), c.bias.empty() ? nullptr : b.as<float>(),
                  c.pos.empty() ? nullptr : p.as<int64_t>(), o.as<float>(), c.T, c.H, c.Hkv, c.D, c.n, c.head_stride,
                  c.pos0);
  const auto o1 = o.to_vector<float>();
  // as the host emulation, plus the device's expf (<= 2 ulp, glibc's < 1 ulp) in every weight
  close(o1.data(), o0.data(), c.T * c.H * c.D, 1e-6, c.n > 1000 ? 2e-4 : 2e-5, what);
}

}  // namespace

TEST_CASE("cuda: device forward ops vs ref (seeds 1..4, T 1/31/33/97)") {
  if (!kvsim::test::cuda_device_or_skip()) return;
  uint64_t seed = 1;
  for (int64_t T : {1, 31, 33, 97}) {
    CAPTURE(T);
    const int64_t K = 67, N = 45;
    auto x = randn(static_cast<size_t>(T * K), seed), w = randn(static_cast<size_t>(N * K), seed + 100),
         b = randn(static_cast<size_t>(N), seed + 200);
    std::vector<float> y0(static_cast<size_t>(T * N));
    ref::matmul(x.data(), w.data(), b.data(), y0.data(), T, K, N);
    auto dx = dev(x), dw = dev(w), db = dev(b), dy = dev(y0);
    cuda::matmul(dx.as<float>(), dw.as<float>(), db.as<float>(), dy.as<float>(), T, K, N);
    // SGEMM sums in another order (FP32, TF32 off): as omp's sgemm, fp32 rounding of 67-term dots
    close(dy.to_vector<float>().data(), y0.data(), T * N, 1e-4, 1e-5, "cuda matmul");

    auto g = randn(static_cast<size_t>(K), seed + 300);
    std::vector<float> r0(x.size());
    ref::rmsnorm(x.data(), g.data(), r0.data(), T, K, 1e-5f);
    auto dg = dev(g), dr = dev(r0);
    cuda::rmsnorm(dx.as<float>(), dg.as<float>(), dr.as<float>(), T, K, 1e-5f);
    close(dr.to_vector<float>().data(), r0.data(), T * K, 1e-7, 4e-7 + 6e-8 * std::sqrt(double(K)),
          "cuda rmsnorm (tree sum, as emulated)");

    for (RopeStyle style : {RopeStyle::interleaved, RopeStyle::half}) {
      std::vector<float> a = randn(static_cast<size_t>(T * 5 * 16), seed + 800), inv(8);
      for (size_t i = 0; i < inv.size(); ++i) inv[i] = 1.0f / static_cast<float>(1 + 3 * i);
      auto da = dev(a), dinv = dev(inv);
      ref::rope(a.data(), T, 5, 16, 300, 10000.0, style, inv.data());
      cuda::rope(da.as<float>(), T, 5, 16, 300, 10000.0, style, dinv.as<float>());
      // device double pow/cos/sin are within 2 ulp of glibc's: cos and sin may round to a float
      // one ulp apart, so each rotated element may move by ~1 ulp of |x|
      close(da.to_vector<float>().data(), a.data(), T * 80, 1e-6, 1e-6, "cuda rope");
    }

    auto gate = randn(static_cast<size_t>(T * 33), seed + 900, 4.0f), up = randn(gate.size(), seed + 901);
    std::vector<float> s0(gate.size());
    ref::swiglu(gate.data(), up.data(), s0.data(), T * 33);
    auto dgate = dev(gate), dup = dev(up), ds = dev(s0);
    cuda::swiglu(dgate.as<float>(), dup.as<float>(), ds.as<float>(), T * 33);
    close(ds.to_vector<float>().data(), s0.data(), T * 33, 1e-7, 1e-6, "cuda swiglu (device expf, <= 2 ulp)");

    for (bool with_bias : {false, true}) {
      AttnCase c(T, 6, 2, 12, T + 5, 5, with_bias, seed + 1000);
      device_attention_case(c, "cuda attention");
    }
    auto am = randn(static_cast<size_t>(T * 41), seed + 1100);
    auto dam = dev(am);
    CHECK(cuda::argmax(dam.as<float>(), T * 41) == ref::argmax(am.data(), T * 41));
    ++seed;
  }
  AttnCase big(2, 32, 8, 128, 4097, 4095, false, 60);
  device_attention_case(big, "cuda attention over 4097 slots");
}

TEST_CASE("cuda: stories260K greedy from BOS for 256 steps on the GPU reproduces greedy_from_bos_256.json") {
  if (!kvsim::test::cuda_device_or_skip()) return;
  KVSIM_REQUIRE_MODELS();
  std::ifstream in(kvsim_test::models_dir() + "/stories260K/greedy_from_bos_256.json");
  const auto expect = nlohmann::json::parse(in).at("greedy_ids").get<std::vector<int32_t>>();
  const model::Model m = model::load_model(kvsim_test::stories_bin());
  model::Runner gpu(m, model::parse_runner_backend("cuda"));
  CHECK(gpu.backend() == Backend::cuda);
  model::Sampler greedy({});
  std::vector<int32_t> got;
  int32_t tok = 1;
  for (int i = 0; i < 256; ++i) {
    tok = greedy.next(gpu.forward(&tok, 1), m.config.vocab_size);
    got.push_back(tok);
  }
  CHECK(got == expect);

  // prefill logits of 40 tokens against ref's, and GPU decode against GPU prefill
  const std::vector<int32_t> ids(got.begin(), got.begin() + 40);
  model::Runner ref(m, Backend::ref);
  const float* lr = ref.forward(ids.data(), 40, true);
  const std::vector<float> want(lr, lr + 40 * m.config.vocab_size);
  gpu.reset();
  const float* lg = gpu.forward(ids.data(), 40, true);
  // 5 layers of SGEMM summing in another order than ref's loops (and the device's expf); the
  // residual stream carries each layer's rounding on: logits of magnitude ~10
  close(lg, want.data(), 40 * m.config.vocab_size, 1e-4, 1e-4, "GPU prefill logits vs ref");
  gpu.reset();
  std::vector<float> dec;
  for (int32_t t : ids) {
    const float* l = gpu.forward(&t, 1);
    dec.insert(dec.end(), l, l + m.config.vocab_size);
  }
  close(dec.data(), want.data(), 40 * m.config.vocab_size, 1e-4, 1e-4, "GPU decode vs ref prefill");
}

TEST_CASE("cuda: the GPU runner refuses strategy caches and host cache access, and rethrows a failing tap") {
  if (!kvsim::test::cuda_device_or_skip()) return;
  model::ModelConfig c;
  c.name = "tiny random", c.hf_architecture = "LlamaForCausalLM";
  c.dim = 48, c.hidden_dim = 80, c.n_layers = 3, c.n_heads = 6, c.n_kv_heads = 2, c.head_dim = 8;
  c.vocab_size = 97, c.seq_len = 64;
  const model::Model m = model::random_model(c, 5);
  CHECK_THROWS_AS(model::Runner(m, Backend::cuda, full_cache_factory()), NotCompiled);
  model::Runner gpu(m, Backend::cuda);
  CHECK_THROWS_AS(gpu.cache(0, 0), NotCompiled);
  const std::vector<int32_t> ids = {1, 5, 9, 33, 2, 96, 40};
  int calls = 0;
  auto bad = [&calls](const model::LayerTensors& lt) {
    ++calls;
    if (lt.layer == 1) throw IoError("disk full (test)");
  };
  gpu.forward(ids.data(), 7, false, bad);
  CHECK_THROWS_AS(gpu.wait_taps(), IoError);
  CHECK(calls == 2);  // layer 2's tap is skipped once one failed
  gpu.reset();
  CHECK_NOTHROW(gpu.forward(ids.data(), 7));  // the runner is usable again
}

TEST_CASE("cuda: a GPU record of stories260K equals a CPU record (q, k, v, q_pre, k_pre, o per layer)") {
  if (!kvsim::test::cuda_device_or_skip()) return;
  KVSIM_REQUIRE_MODELS();
  const model::Model m = model::load_model(kvsim_test::stories_bin());
  model::Llama2cTokenizer tok(kvsim_test::stories_tok());
  model::PromptSpec p;
  p.ids = tok.encode("Tom had a small red boat. He took it to the pond", true);
  p.source = "test";
  model::RecordOptions opt;
  opt.generate = 150, opt.pre = true, opt.output = true, opt.block = 64;  // several blocks, last one short
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("kvsim_test_cuda_record_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto record = [&](Backend b, const std::string& name) {
    traces::WriterOptions wo;
    wo.overwrite = true;
    const std::string path = (dir / name).string();
    traces::TraceWriter w(path, model::trace_header_for(m, traces::DType::f32, "test", b == Backend::cuda ? "cuda:test" : "cpu"), wo);
    model::Runner r(m, b);
    model::record_sequence(r, nullptr, p, opt, w);
    w.finish();
    return path;
  };
  traces::TraceReader cpu(record(model::parse_runner_backend("cpu"), "cpu.h5"));
  traces::TraceReader gpu(record(Backend::cuda, "gpu.h5"));
  REQUIRE(gpu.sequence(0).n_tokens == cpu.sequence(0).n_tokens);
  // pass 1 generated the same continuation (greedy, no near-ties in 150 steps of this prompt)
  REQUIRE(gpu.sequence(0).n_tokens == static_cast<int64_t>(p.ids.size()) + 150);
  for (int64_t l = 0; l < m.config.n_layers; ++l)
    for (traces::Kind kind : {traces::Kind::q, traces::Kind::k, traces::Kind::v, traces::Kind::q_pre,
                              traces::Kind::k_pre, traces::Kind::o}) {
      CAPTURE(l);
      const auto a = gpu.read_layer(0, l, kind), b = cpu.read_layer(0, l, kind);
      REQUIRE(a.size() == b.size());
      // layer l's tensors carry l layers of SGEMM rounding in another order than the CPU's; values ~1-10
      close(a.data(), b.data(), static_cast<int64_t>(a.size()), 1e-4, 1e-4, "GPU vs CPU record");
    }
  // the CLI marks the trace with the device
  const std::string out = (dir / "cli.h5").string();
  const std::string cmd = std::string(KVSIM_BIN) + " record --model " + kvsim_test::stories_bin() +
                          " --prompt 'Once upon a time' --generate 20 --backend cuda --quiet --out " + out;
  REQUIRE(std::system(cmd.c_str()) == 0);
  CHECK(traces::TraceReader(out).header().device.rfind("cuda:", 0) == 0);
  fs::remove_all(dir);
}

TEST_CASE("cli record/generate: --backend cuda without CUDA or a device exits 2 with one line") {
  std::string why;
  if (backend_available(Backend::cuda, &why)) {
    MESSAGE("not applicable: a CUDA device can run here");
    return;
  }
  namespace fs = std::filesystem;
  const fs::path err = fs::temp_directory_path() / ("kvsim_test_cuda_cli_" + std::to_string(::getpid()) + ".err");
  for (const std::string args : {"record --model nonexistent.bin --prompt hi --out never.h5 --backend cuda",
                                 "generate --model nonexistent.bin --prompt hi --backend cuda"}) {
    CAPTURE(args);
    const int st = std::system((std::string(KVSIM_BIN) + " " + args + " 2>" + err.string()).c_str());
    CHECK(WIFEXITED(st));
    CHECK(WEXITSTATUS(st) == 2);
    std::ifstream f(err);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string e = ss.str();
    CHECK(std::count(e.begin(), e.end(), '\n') == 1);
    CHECK(e.find("backend cuda") != std::string::npos);
    CHECK(e.find(why) != std::string::npos);
  }
  CHECK(!fs::exists("never.h5.partial"));
  fs::remove(err);
}
