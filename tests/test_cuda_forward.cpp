// The GPU forward pass's arithmetic on the CPU ("cuda-host: ..." cases, run everywhere): the
// kernels of cuda/forward_ops.cu emulated lane by lane around cuda/forward_core.h
// (tests/cuda_forward_test_util.h). Each op against sim/ref on the harness cases is in
// test_backend_forward.cpp; here the attention tree's accuracy, and the GPU runner's forward
// composed from the emulated ops on stories260K. The device's runner: test_cuda_forward_device.cpp.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "cuda/device.h"
#include "cuda/forward_core.h"
#include "cuda/forward_ops.h"
#include "sim/kernels/forward_ops.h"
#include "tests/backend_harness.h"
#include "tests/cuda_forward_test_util.h"
#include "tests/model_test_util.h"
#include "traces/model/model.h"
#include "traces/model/runner.h"

using namespace kvsim;
using namespace kvsim_test::cuda_fwd;

TEST_CASE("cuda-host: attention over 4097 slots: the emulated kernel's tree sum is no further from the exact answer than ref's loop") {
  // 32 query heads on 8 KV heads, D = 128 (llama3 widths). The harness (test_backend_forward.cpp)
  // allows the two 1e-4 relative apart: ref adds 4097 exponentials one by one onto a growing sum,
  // the tree keeps its partials comparable in size. Which one is the better: both against the same
  // attention in double precision.
  AttnCase big(2, 32, 8, 128, 4097, 4095, false, 60);
  std::vector<float> b0(big.q.size()), b1(big.q.size());
  ref::attention(big.q.data(), big.views.data(), b0.data(), 2, 32, 8, 128, 4095);
  emulate_attention(big.q.data(), big.k.data(), big.v.data(), nullptr, nullptr, b1.data(), 2, 32, 8, 128, 4097,
                    big.head_stride, 4095);
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
  kvsim::test::check_close("emulated GPU forward vs ref runner", lg.data(), lr, static_cast<size_t>(60 * V),
                           {5e-5, 1e-5});
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
