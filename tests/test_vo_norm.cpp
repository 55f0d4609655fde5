// The optional per-layer dataset vo_norm [H, T] (traces/FORMAT.md): n[h, i] = ||W_o,h v_i||_1.
//  - `kvsim record --record vo_norm` on stories260K writes it, and it equals a plain double loop
//    over the trace's own v and the checkpoint's o_proj (wo[:, h*D : (h+1)*D], KV head h / G);
//  - the reader refuses a NaN, negative or infinite value, a wrong shape and a dataset in some
//    layers only, each in one line;
//  - a replay hands it to a strategy that asks for it and refuses, in one line naming the trace and
//    the option, a trace without it; the live model cache refuses such a strategy.
#include <doctest/doctest.h>
#include <hdf5.h>

#include <cmath>
#include <limits>
#include <vector>

#include "model_test_util.h"
#include "sim/base/error.h"
#include "sim/replay.h"
#include "sim/strategies/strategy.h"
#include "tests/trace_helpers.h"
#include "traces/model/model.h"
#include "traces/model/strategy_cache.h"
#include "traces/reader.h"
#include "traces/writer.h"

using namespace kvsim;

namespace {

// The expected value, written out from the definition: for each of the dim rows r of o_proj,
// y_r = sum_d wo[r, h*D + d] * v[h/G, i, d] (double), then sum_r |y_r|.
double vo_norm_ref(const model::Model& m, const std::vector<float>& v /* [Hkv, T, D] */, int64_t l, int64_t h,
                   int64_t i, int64_t T) {
  const auto& c = m.config;
  const int64_t D = c.head_dim, G = c.n_heads / c.n_kv_heads;
  const std::vector<float>& wo = m.layers[static_cast<size_t>(l)].wo;
  double n = 0;
  for (int64_t r = 0; r < c.dim; ++r) {
    double y = 0;
    for (int64_t d = 0; d < D; ++d)
      y += static_cast<double>(wo[static_cast<size_t>(r * c.q_dim() + h * D + d)]) *
           v[static_cast<size_t>(((h / G) * T + i) * D + d)];
    n += std::fabs(y);
  }
  return n;
}

bool is_one_line(const std::string& s) { return !s.empty() && s.find('\n') == std::string::npos; }

// A small f32 trace: L = 2, H = 4, Hkv = 2, D = 4, T = 9; vo_norm written from `vo` ([H, T] per
// layer) when non-empty.
std::string small_trace(const test::TempDir& dir, const std::string& name, const std::vector<float>& vo) {
  traces::TraceHeader h;
  h.n_layers = 2, h.n_heads = 4, h.n_kv_heads = 2, h.head_dim = 4;
  h.synthetic = true, h.device = "synthetic";
  const std::string path = dir.file(name);
  traces::TraceWriter w(path, h);
  traces::SequenceSpec s;
  s.n_tokens = 9, s.prefill_len = 5, s.tokens.assign(9, 1);
  if (!vo.empty()) s.kinds.push_back(traces::Kind::vo_norm);
  w.begin_sequence(s);
  for (int64_t l = 0; l < 2; ++l) {
    std::vector<float> q(4 * 9 * 4), kv(2 * 9 * 4);
    for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<float>((i * 7 + l) % 5) * 0.25f - 0.5f;
    for (size_t i = 0; i < kv.size(); ++i) kv[i] = static_cast<float>((i * 3 + l) % 7) * 0.125f - 0.375f;
    w.write(traces::Kind::q, l, 0, 4, 0, 9, q.data());
    w.write(traces::Kind::k, l, 0, 2, 0, 9, kv.data());
    w.write(traces::Kind::v, l, 0, 2, 0, 9, kv.data());
    if (!vo.empty()) w.write(traces::Kind::vo_norm, l, 0, 4, 0, 9, vo.data() + l * 36);
  }
  w.finish();
  return path;
}

// Adds /sequences/0000/layers/<l>/vo_norm of the given shape (float32, zeros) to a finished trace.
void add_vo_norm(const std::string& path, const std::vector<int64_t>& layers, std::vector<hsize_t> dims) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  REQUIRE(f >= 0);
  for (int64_t l : layers) {
    const std::string dp = "/sequences/0000/layers/" + std::to_string(l) + "/vo_norm";
    hid_t sp = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
    hid_t d = H5Dcreate2(f, dp.c_str(), H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    REQUIRE(d >= 0);
    hsize_t n = 1;
    for (hsize_t x : dims) n *= x;
    std::vector<float> zeros(n, 0.0f);
    REQUIRE(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros.data()) >= 0);
    H5Dclose(d);
    H5Sclose(sp);
  }
  H5Fclose(f);
}

// A strategy that keeps everything and copies the LayerView's vo_norm at prefill.
struct VoProbe {
  std::vector<std::vector<float>> seen;  // per layer, [H, T]
};
class ProbeState final : public StrategyState {
 public:
  ProbeState(VoProbe* p, int64_t layer) : p_(p), layer_(layer) {}
  void prefill(std::span<SlotCache>, const LayerView& lv, int64_t) override {
    REQUIRE(lv.vo_norm != nullptr);
    p_->seen[static_cast<size_t>(layer_)].assign(lv.vo_norm, lv.vo_norm + lv.H * lv.T);
  }
  void evict(std::span<SlotCache>, int64_t) override {}
  std::vector<std::string> degeneracies(const SlotCache&, int64_t) const override { return {}; }

 private:
  VoProbe* p_;
  int64_t layer_;
};
class ProbeStrategy final : public Strategy {
 public:
  explicit ProbeStrategy(VoProbe* p) : p_(p) { name_ = spec_text_ = "vo_probe"; }
  bool needs_vo_norm() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    return std::make_unique<ProbeState>(p_, ctx.layer);
  }

 private:
  VoProbe* p_;
};

}  // namespace

TEST_CASE("vo_norm: kvsim record --record vo_norm on stories260K equals ||W_o,h v_i||_1 from the trace's v") {
  KVSIM_REQUIRE_MODELS();
  const test::TempDir dir;
  const model::Model m = model::load_model(kvsim_test::stories_bin());
  const auto& c = m.config;
  for (const char* dtype : {"float32", "float16"}) {
    CAPTURE(dtype);
    const std::string out = dir.file(std::string("vo_") + dtype + ".h5");
    // --block 16: several recording blocks per sequence, the last one short
    const auto r = test::run_cmd(test::kvsim_bin() + " record --model " + kvsim_test::stories_bin() +
                                 " --prompt 'Once upon a time' --generate 40 --block 16 --record vo_norm --dtype " +
                                 dtype + " --quiet --out " + out);
    REQUIRE_MESSAGE(r.exit_code == 0, r.out);
    traces::TraceReader tr(out);
    REQUIRE(tr.has(0, traces::Kind::vo_norm));
    const int64_t T = tr.sequence(0).n_tokens, H = c.n_heads;
    REQUIRE(T > 40);
    // the dataset's shape as HDF5 sees it: [H, T]
    {
      hid_t f = H5Fopen(out.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
      hid_t d = H5Dopen2(f, "/sequences/0000/layers/3/vo_norm", H5P_DEFAULT);
      hid_t sp = H5Dget_space(d);
      hsize_t dims[3] = {0, 0, 0};
      CHECK(H5Sget_simple_extent_ndims(sp) == 2);
      H5Sget_simple_extent_dims(sp, dims, nullptr);
      CHECK(dims[0] == static_cast<hsize_t>(H));
      CHECK(dims[1] == static_cast<hsize_t>(T));
      H5Sclose(sp), H5Dclose(d), H5Fclose(f);
    }
    // float32: the recorder's double sums of the same float v, rounded once to float32 (2^-24
    // relative), against this loop's: rtol 1e-6. float16: v and the norm are each rounded to 2^-11.
    const double rtol = dtype == std::string("float32") ? 1e-6 : 5e-3;
    double worst = 0;
    for (int64_t l = 0; l < c.n_layers; ++l) {
      std::vector<float> v(static_cast<size_t>(c.n_kv_heads * T * c.head_dim));
      tr.read_block(0, l, traces::Kind::v, 0, c.n_kv_heads, 0, T, v.data());
      const auto vo = tr.read_vo_norm(0, l);
      REQUIRE(vo.shape()[0] == static_cast<size_t>(H));
      REQUIRE(vo.shape()[1] == static_cast<size_t>(T));
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < T; ++i) {
          const double ref = vo_norm_ref(m, v, l, h, i, T), got = vo(h, i);
          CHECK(ref > 0);
          worst = std::max(worst, std::fabs(got - ref) / ref);
        }
    }
    MESSAGE(std::string(dtype) << ": max relative difference " << worst);
    CHECK(worst <= rtol);
    // kvsim info lists it with the sequence's tensors
    const auto info = test::run_cmd(test::kvsim_bin() + " info " + out);
    CHECK(info.exit_code == 0);
    CHECK(info.out.find("q,k,v,vo_norm") != std::string::npos);
  }
  // an unknown --record item is a usage error, in one line
  const auto bad = test::run_cmd(test::kvsim_bin() + " record --model " + kvsim_test::stories_bin() +
                                 " --prompt 'Once' --record vo_norm,attn --quiet --out " + dir.file("bad.h5"));
  CHECK(bad.exit_code == 2);
  CHECK(bad.out.find("--record: unknown item 'attn' (choose: vo_norm, kvzip)") != std::string::npos);
}

TEST_CASE("vo_norm: the reader refuses NaN, negative and infinite values, a wrong shape and some layers only") {
  const test::TempDir dir;
  std::vector<float> good(72);
  for (size_t i = 0; i < good.size(); ++i) good[i] = 0.5f + static_cast<float>(i);
  {
    traces::TraceReader r(small_trace(dir, "good.h5", good));
    REQUIRE(r.has(0, traces::Kind::vo_norm));
    const auto vo = r.read_vo_norm(0, 1);
    CHECK(vo(2, 7) == good[36 + 2 * 9 + 7]);
    CHECK(r.check_finite().empty());
  }
  struct Bad {
    const char* name;
    float value;
    const char* text;
  };
  for (const Bad& b :
       {Bad{"nan.h5", std::numeric_limits<float>::quiet_NaN(), "value nan"}, Bad{"neg.h5", -0.25f, "value -0.25"},
        Bad{"inf.h5", std::numeric_limits<float>::infinity(), "value inf"}, Bad{"big.h5", 70000.0f, "value 70000"}}) {
    CAPTURE(b.name);
    std::vector<float> vo = good;
    vo[36 + 3 * 9 + 6] = b.value;  // layer 1, head 3, token 6
    const std::string path = small_trace(dir, b.name, vo);
    traces::TraceReader r(path);
    CHECK_NOTHROW(r.read_vo_norm(0, 0));
    try {
      r.read_vo_norm(0, 1);
      FAIL("no error");
    } catch (const NumericError& e) {
      const std::string msg = e.what();
      CHECK(is_one_line(msg));
      CHECK(msg.find(path + ": /sequences/0000/layers/1/vo_norm: " + b.text + " at [head 3, token 6]: vo_norm holds") !=
            std::string::npos);
    }
    const auto found = r.check_finite();
    REQUIRE(found.size() == 1);
    CHECK(found[0].dataset == "/sequences/0000/layers/1/vo_norm");
    CHECK(found[0].head == 3);
    CHECK(found[0].token == 6);
    const auto info = test::run_cmd(test::kvsim_bin() + " info --check " + path);
    CHECK(info.exit_code == 2);
    CHECK(info.out.find("vo_norm holds L1 norms, 0 <= x <= 65504), first") != std::string::npos);
  }
  auto refused = [&](const std::string& path, const std::string& text) {
    try {
      traces::TraceReader r(path);
      FAIL("opened");
    } catch (const FormatError& e) {
      const std::string msg = e.what();
      CHECK(is_one_line(msg));
      CHECK_MESSAGE(msg.find(text) != std::string::npos, msg);
    }
  };
  {
    const std::string p = small_trace(dir, "shape_t.h5", {});
    add_vo_norm(p, {0, 1}, {4, 10});
    refused(p, "/sequences/0000/layers/0/vo_norm: shape [4, 10] but expected [4, 9] from n_heads = 4, n_tokens = 9");
  }
  {
    const std::string p = small_trace(dir, "shape_kv.h5", {});
    add_vo_norm(p, {0, 1}, {2, 9});  // Hkv rows instead of H
    refused(p, "/sequences/0000/layers/0/vo_norm: shape [2, 9] but expected [4, 9]");
  }
  {
    const std::string p = small_trace(dir, "shape_3d.h5", {});
    add_vo_norm(p, {0, 1}, {4, 9, 1});
    refused(p, "/sequences/0000/layers/0/vo_norm: shape [4, 9, 1] but expected [4, 9]");
  }
  {
    const std::string p = small_trace(dir, "one_layer.h5", {});
    add_vo_norm(p, {1}, {4, 9});
    refused(p, "/sequences/0000: optional tensor 'vo_norm' is present in some layers only");
  }
}

TEST_CASE("vo_norm: a replay hands it to a strategy that needs it, and refuses a trace without it") {
  const test::TempDir dir;
  std::vector<float> vo(72);
  for (size_t i = 0; i < vo.size(); ++i) vo[i] = 0.125f * static_cast<float>(i);
  VoProbe probe;
  probe.seen.resize(2);
  const ProbeStrategy s(&probe);
  const Strategy* ptrs[] = {&s};
  ReplayOptions opt;
  opt.stats_cache = "off";
  {
    traces::TraceReader r(small_trace(dir, "with.h5", vo));
    replay_trace(r, ptrs, opt);
    for (size_t l = 0; l < 2; ++l) {
      REQUIRE(probe.seen[l].size() == 36);
      for (size_t i = 0; i < 36; ++i) CHECK(probe.seen[l][i] == vo[l * 36 + i]);
    }
  }
  {
    const std::string path = small_trace(dir, "without.h5", {});
    traces::TraceReader r(path);
    try {
      replay_trace(r, ptrs, opt);
      FAIL("no error");
    } catch (const UsageError& e) {
      const std::string msg = e.what();
      CHECK(is_one_line(msg));
      CHECK(msg == path +
                       ": sequence 0000: vo_probe needs vo_norm, which the trace lacks (record it with kvsim record "
                       "--record vo_norm)");
    }
  }
  // the live model cache (kvsim ppl) computes vo_norm from o_proj: without the weights, refused before anything runs
  model::ModelConfig c;
  c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 4, c.dim = 16, c.seq_len = 64;
  try {
    model::check_strategy_fits(s, c, 32, 8, Protocol::evict);
    FAIL("no error");
  } catch (const UsageError& e) {
    CHECK(is_one_line(e.what()));
    CHECK(std::string(e.what()).find("needs vo_norm") != std::string::npos);
  }
}
