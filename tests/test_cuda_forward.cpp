// The GPU forward pass's arithmetic on the CPU ("cuda-host: ..." cases, run everywhere): the
// kernels of cuda/forward_ops.cu emulated lane by lane around cuda/forward_core.h
// (tests/cuda_forward_test_util.h) against sim/ref/forward_ops, and the GPU runner's forward
// composed from them on stories260K. The device cases are in test_cuda_forward_device.cpp.
// Tolerances are |x - ref| <= atol + rtol |ref|; exact (0, 0) where the arithmetic is the same.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "cuda/device.h"
#include "cuda/forward_ops.h"
#include "cuda/forward_core.h"
#include "cuda_forward_test_util.h"
#include "model_test_util.h"
#include "sim/kernels/forward_ops.h"
#include "traces/model/model.h"
#include "traces/model/runner.h"

using namespace kvsim;
using namespace kvsim_test::cuda_fwd;

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
  INFO("4097 slots vs double: ref max error " << err_ref << ", cuda emulation max error " << err_emu);
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

namespace {

// The GPU runner's forward (cuda/forward_runner.cu) step by step on the host: the same [Hkv,
// seq_len, D] cache filled through kv_cache_index, attention over it with pos == nullptr and
// n = pos + T, the emulated kernels for everything but the SGEMMs (ref::matmul stands in).
class HostGpuTwin {
 public:
  explicit HostGpuTwin(const model::Model& m) : m_(m), c_(m.config) {
    kc_.assign(static_cast<size_t>(c_.n_layers), std::vector<float>(static_cast<size_t>(c_.kv_dim() * c_.seq_len)));
    vc_ = kc_;
  }
  std::vector<float> forward(const std::vector<int32_t>& ids, bool all_logits) {
    const int64_t T = static_cast<int64_t>(ids.size()), dim = c_.dim, H = c_.n_heads, Hkv = c_.n_kv_heads;
    const int64_t D = c_.head_dim, hid = c_.hidden_dim, qd = c_.q_dim(), kvd = c_.kv_dim();
    const float* f = c_.inv_freq.empty() ? nullptr : c_.inv_freq.data();
    std::vector<float> x(static_cast<size_t>(T * dim)), xb(x.size()), q(static_cast<size_t>(T * qd)), att(q.size());
    std::vector<float> k(static_cast<size_t>(T * kvd)), v(k.size()), hb(static_cast<size_t>(T * hid)), hb2(hb.size());
    for (int64_t i = 0; i < T * dim; ++i)  // gather_kernel
      x[static_cast<size_t>(i)] = m_.embedding[static_cast<size_t>(ids[static_cast<size_t>(i / dim)] * dim + i % dim)];
    auto b = [](const std::vector<float>& w) { return w.empty() ? nullptr : w.data(); };
    for (int64_t l = 0; l < c_.n_layers; ++l) {
      const model::LayerWeights& w = m_.layers[static_cast<size_t>(l)];
      emulate_rmsnorm(x.data(), w.rms_att.data(), xb.data(), T, dim, c_.norm_eps);
      ref::matmul(xb.data(), w.wq.data(), b(w.bq), q.data(), T, dim, qd);
      ref::matmul(xb.data(), w.wk.data(), b(w.bk), k.data(), T, dim, kvd);
      ref::matmul(xb.data(), w.wv.data(), b(w.bv), v.data(), T, dim, kvd);
      emulate_rope(q.data(), T, H, D, pos_, c_.rope_theta, c_.rope_style, f);
      emulate_rope(k.data(), T, Hkv, D, pos_, c_.rope_theta, c_.rope_style, f);
      for (int64_t i = 0; i < T * kvd; ++i) {  // append_kv_kernel
        const size_t dst = static_cast<size_t>(core::kv_cache_index(i, Hkv, D, c_.seq_len, pos_));
        kc_[static_cast<size_t>(l)][dst] = k[static_cast<size_t>(i)];
        vc_[static_cast<size_t>(l)][dst] = v[static_cast<size_t>(i)];
      }
      emulate_attention(q.data(), kc_[static_cast<size_t>(l)].data(), vc_[static_cast<size_t>(l)].data(), nullptr,
                        nullptr, att.data(), T, H, Hkv, D, pos_ + T, c_.seq_len * D, pos_);
      ref::matmul(att.data(), w.wo.data(), nullptr, xb.data(), T, qd, dim);
      for (size_t i = 0; i < x.size(); ++i) x[i] += xb[i];
      emulate_rmsnorm(x.data(), w.rms_ffn.data(), xb.data(), T, dim, c_.norm_eps);
      ref::matmul(xb.data(), w.w1.data(), nullptr, hb.data(), T, dim, hid);
      ref::matmul(xb.data(), w.w3.data(), nullptr, hb2.data(), T, dim, hid);
      for (size_t i = 0; i < hb.size(); ++i) hb[i] = core::swiglu_elem(hb[i], hb2[i]);
      ref::matmul(hb.data(), w.w2.data(), nullptr, xb.data(), T, hid, dim);
      for (size_t i = 0; i < x.size(); ++i) x[i] += xb[i];
    }
    const int64_t n_out = all_logits ? T : 1;
    emulate_rmsnorm(x.data() + (T - n_out) * dim, m_.rms_final.data(), xb.data(), n_out, dim, c_.norm_eps);
    std::vector<float> logits(static_cast<size_t>(n_out * c_.vocab_size));
    ref::matmul(xb.data(), m_.classifier(), nullptr, logits.data(), n_out, dim, c_.vocab_size);
    pos_ += T;
    return logits;
  }

 private:
  const model::Model& m_;
  const model::ModelConfig& c_;
  std::vector<std::vector<float>> kc_, vc_;  // [L][Hkv, seq_len, D]
  int64_t pos_ = 0;
};

}  // namespace

TEST_CASE("cuda-host: the GPU runner's forward emulated on stories260K: greedy oracle, ref logits") {
  KVSIM_REQUIRE_MODELS();
  const model::Model m = model::load_model(kvsim_test::stories_bin());
  std::ifstream in(kvsim_test::models_dir() + "/stories260K/greedy_from_bos_256.json");
  const auto expect = nlohmann::json::parse(in).at("greedy_ids").get<std::vector<int32_t>>();
  const int64_t V = m.config.vocab_size;
  HostGpuTwin twin(m);
  std::vector<int32_t> got;
  int32_t tok = 1;
  for (int i = 0; i < 64; ++i) {  // decode through the [Hkv, seq_len, D] cache, argmax as the kernel's
    const auto logits = twin.forward({tok}, false);
    tok = static_cast<int32_t>(emulate_argmax(logits.data(), V));
    got.push_back(tok);
  }
  CHECK(got == std::vector<int32_t>(expect.begin(), expect.begin() + 64));

  // a prefill in blocks of 17 (the cache grows across calls) against ref's single prefill
  const std::vector<int32_t> ids(expect.begin(), expect.begin() + 60);
  model::Runner ref(m, Backend::ref);
  const float* lr = ref.forward(ids.data(), 60, true);
  HostGpuTwin blocks(m);
  std::vector<float> lg;
  for (size_t t = 0; t < ids.size(); t += 17) {
    const auto l = blocks.forward(std::vector<int32_t>(ids.begin() + static_cast<long>(t),
                                                       ids.begin() + static_cast<long>(std::min(t + 17, ids.size()))),
                                  true);
    lg.insert(lg.end(), l.begin(), l.end());
  }
  // same matmuls, reductions in trees instead of loops: each rmsnorm scale moves by ~1e-7
  // relative, carried through 5 layers into logits of magnitude up to ~10, so an absolute bound
  // (a near-zero logit is a cancelling sum of terms of that size)
  close(lg.data(), lr, 60 * V, 5e-5, 1e-5, "emulated GPU forward vs ref runner");
}

TEST_CASE("cuda-host: cuBLAS, opened on first use rather than linked, loads from the toolkit (no GPU needed)") {
  std::string why;
  if (!kvsim::cuda::built_with_cuda()) {
    CHECK_FALSE(kvsim::cuda::cublas_loadable(&why));
    CHECK(why == "built without CUDA");
    return;
  }
  INFO(why);
  CHECK(kvsim::cuda::cublas_loadable(&why));
}
