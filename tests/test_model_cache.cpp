// The runner's KvCache interface (sim/base/kv_cache.h), exercised by caches written here the way a
// strategy would own the live cache. Expected values come from identities derived by hand.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "model_test_util.h"
#include "sim/base/kv_cache.h"
#include "traces/model/model.h"
#include "traces/model/runner.h"

using namespace kvsim;

namespace {

// Holds tokens at even positions twice, each copy with logit bias -ln 2 (odd positions once, bias
// 0). Softmax weight of a pair: 2 e^(z - ln 2) = e^z, so attention is exactly that of the full
// cache (up to fp32 rounding); a runner that ignored the bias would weight even positions double.
class DuplicatingCache final : public KvCache {
 public:
  explicit DuplicatingCache(int64_t D, int* steps) : D_(D), steps_(steps) {}
  void clear() override { k_.clear(), v_.clear(), b_.clear(), p_.clear(); }
  void append(const float* k, const float* v, int64_t n, int64_t pos0) override {
    for (int64_t t = 0; t < n; ++t)
      for (int copy = 0; copy < ((pos0 + t) % 2 == 0 ? 2 : 1); ++copy) {
        k_.insert(k_.end(), k + t * D_, k + (t + 1) * D_);
        v_.insert(v_.end(), v + t * D_, v + (t + 1) * D_);
        b_.push_back((pos0 + t) % 2 == 0 ? -std::log(2.0f) : 0.0f);
        p_.push_back(pos0 + t);
      }
  }
  KvView view() const override {
    return {k_.data(), v_.data(), ignore_bias ? nullptr : b_.data(), p_.data(), static_cast<int64_t>(p_.size())};
  }
  bool ignore_bias = false;
  void end_step() override { ++*steps_; }

 private:
  int64_t D_;
  int* steps_;
  std::vector<float> k_, v_, b_;
  std::vector<int64_t> p_;
};

model::Model small_model() {
  model::ModelConfig c;
  c.name = "random-llama";
  c.dim = 48;
  c.hidden_dim = 80;
  c.n_layers = 2;
  c.n_heads = 6;
  c.n_kv_heads = 3;
  c.head_dim = 8;
  c.vocab_size = 97;
  c.seq_len = 40;
  c.rope_style = RopeStyle::interleaved;
  model::Model m = model::random_model(c, 99);
  for (auto& l : m.layers)  // sharper attention than std 0.02 weights give
    for (auto* w : {&l.wq, &l.wk})
      for (auto& x : *w) x *= 40.0f;
  return m;
}

}  // namespace

TEST_CASE("kv cache: a strategy-owned cache plugs into the runner (duplicated slots with bias -ln 2 = full)") {
  const model::Model m = small_model();
  const std::vector<int32_t> ids = {1, 5, 9, 96, 3, 3, 40, 7, 0, 12, 33};
  const int64_t T = static_cast<int64_t>(ids.size()), V = m.config.vocab_size;
  for (Backend b : {Backend::ref, Backend::omp}) {
    if (!backend_available(b)) continue;
    CAPTURE(backend_name(b));
    model::Runner full(m, b);
    const float* pf = full.forward(ids.data(), 4, true);
    std::vector<float> lf(pf, pf + 4 * V);
    for (int64_t t = 4; t < T; ++t) {
      const float* l = full.forward(&ids[static_cast<size_t>(t)], 1);
      lf.insert(lf.end(), l, l + V);
    }
    int steps = 0;
    model::Runner dup(
        m, b, [&steps](int64_t, int64_t, int64_t D, int64_t) { return std::make_unique<DuplicatingCache>(D, &steps); });
    const float* pd = dup.forward(ids.data(), 4, true);
    std::vector<float> ld(pd, pd + 4 * V);
    for (int64_t t = 4; t < T; ++t) {
      const float* l = dup.forward(&ids[static_cast<size_t>(t)], 1);
      ld.insert(ld.end(), l, l + V);
    }
    // fp32: e^(z - ln 2) rounds differently from e^z / 2, and the sums run over twice the terms
    kvsim_test::check_close(ld.data(), lf.data(), T * V, 1e-5, 1e-4, "duplicated-slot cache vs full cache");
    // the same cache with its biases hidden must move the logits (the check above has teeth)
    model::Runner nobias(m, b, [&steps](int64_t, int64_t, int64_t D, int64_t) {
      auto c = std::make_unique<DuplicatingCache>(D, &steps);
      c->ignore_bias = true;
      return c;
    });
    const float* pn = nobias.forward(ids.data(), T, true);
    double moved = 0;
    for (int64_t i = 0; i < T * V; ++i)
      moved = std::max(moved, static_cast<double>(std::abs(pn[i] - lf[static_cast<size_t>(i)])));
    CHECK(moved > 1e-3);
    // end_step once per forward call per (layer, KV head), for both runners above
    steps -= m.config.n_layers * m.config.n_kv_heads;
    CHECK(steps == (1 + (T - 4)) * m.config.n_layers * m.config.n_kv_heads);
  }
}
