// Perplexity with a strategy owning the runner's cache (traces/model/perplexity.h, strategy_cache.h).
// Oracles, each computed here independently of the strategy cache:
//   - full: the plain Runner's one all-logits forward over all T ids (one batched prefill: another
//     code path than the adapter's prompt + token-by-token attend_slots), log-softmax in the test;
//   - window:budget=B: a KvCache written here that keeps, as the replay does (sim/strategies/window.cpp,
//     sim/replay.cpp order store -> attend -> evict), the newest B tokens after every step, hence the
//     newest B+1 at attention, driven token by token by the plain Runner and its own attention kernel;
//   - ratio: by hand, (min(B, t) + 1) / (t + 1) per decode step for strategies that hold B slots;
//   - a budget >= T keeps everything, so tova and cms_aggregate (alternative views) reproduce full;
//   - what a strategy is handed (k_norm, entropy of every token, prompt colsums): a probe strategy
//     that keeps everything records them, compared with the reference kernels run on q, k of one
//     all-token forward of the plain runner (a LayerTap), and k_norm summed here.
#include <doctest/doctest.h>

#include <cmath>
#include <deque>
#include <memory>

#include "model_test_util.h"
#include "sim/base/error.h"
#include "sim/base/kv_cache.h"
#include "sim/exact_stats.h"
#include "sim/strategies/strategy.h"
#include "traces/model/model.h"
#include "traces/model/perplexity.h"
#include "traces/model/runner.h"
#include "traces/model/strategy_cache.h"
#include "traces/model/tokenizer.h"

using namespace kvsim;

namespace {

model::Model small_model() {  // a random Llama with G = 2, sharp attention (as test_model_cache.cpp)
  model::ModelConfig c;
  c.name = "random-llama";
  c.dim = 48, c.hidden_dim = 80, c.n_layers = 2, c.n_heads = 6, c.n_kv_heads = 3, c.head_dim = 8;
  c.vocab_size = 97, c.seq_len = 64;
  c.rope_style = RopeStyle::interleaved;
  model::Model m = model::random_model(c, 7);
  for (auto& l : m.layers)
    for (auto* w : {&l.wq, &l.wk})
      for (auto& x : *w) x *= 40.0f;
  return m;
}

std::vector<int32_t> small_ids(int64_t T) {
  std::vector<int32_t> ids;
  for (int64_t t = 0; t < T; ++t) ids.push_back(static_cast<int32_t>((t * 37 + t * t * 11 + 5) % 97));
  return ids;
}

std::vector<int32_t> stories_ids() {  // 151 tokens of a TinyStories-like text
  model::Llama2cTokenizer tok(kvsim_test::stories_tok());
  return tok.encode(
      "Once upon a time, there was a little girl named Lily. She loved to play in the park with her red "
      "ball. One day, she saw a big dog near the swings. The dog was sad because it was lost. Lily said, "
      "\"Do not be sad, dog. I will help you find your home.\" They walked and walked until they saw a "
      "small house with a blue door. A kind old man opened the door and smiled. \"Thank you, Lily!\" he "
      "said. \"My dog was lost all day.\" Lily was happy. She went home and told her mom about the dog.",
      true);
}

// Mean of -log softmax(logits[t-1])[ids[t]] over t = P..T-1 (plain loops, long double).
double mean_nll(const std::vector<std::vector<float>>& logits_at, const std::vector<int32_t>& ids, int64_t P) {
  long double sum = 0;
  const int64_t T = static_cast<int64_t>(ids.size());
  for (int64_t t = P; t < T; ++t) {
    const auto& l = logits_at[static_cast<size_t>(t - 1)];
    long double mx = l[0], z = 0;
    for (float x : l) mx = std::max<long double>(mx, x);
    for (float x : l) z += std::exp(static_cast<long double>(x) - mx);
    sum += mx + std::log(z) - l[static_cast<size_t>(ids[static_cast<size_t>(t)])];
  }
  return static_cast<double>(sum / static_cast<long double>(T - P));
}

// Oracle 1: the plain runner, all logits of one forward over every id.
double full_nll_one_forward(const model::Model& m, const std::vector<int32_t>& ids, int64_t P, Backend b) {
  model::Runner r(m, b);
  const int64_t T = static_cast<int64_t>(ids.size()), V = m.config.vocab_size;
  const float* l = r.forward(ids.data(), T, true);
  std::vector<std::vector<float>> at;
  for (int64_t t = 0; t < T; ++t) at.emplace_back(l + t * V, l + (t + 1) * V);
  return mean_nll(at, ids, P);
}

// Oracle 2: exact tokens; after every forward call only the newest B stay.
class NewestCache final : public KvCache {
 public:
  NewestCache(int64_t D, int64_t B) : D_(D), B_(B) {}
  void clear() override { k_.clear(), v_.clear(), pos_.clear(); }
  void append(const float* k, const float* v, int64_t n_tok, int64_t pos0) override {
    k_.insert(k_.end(), k, k + n_tok * D_);
    v_.insert(v_.end(), v, v + n_tok * D_);
    for (int64_t t = 0; t < n_tok; ++t) pos_.push_back(pos0 + t);
  }
  KvView view() const override {
    return KvView{k_.data(), v_.data(), nullptr, pos_.data(), static_cast<int64_t>(pos_.size())};
  }
  void end_step() override {
    const int64_t drop = static_cast<int64_t>(pos_.size()) - B_;
    if (drop <= 0) return;
    k_.erase(k_.begin(), k_.begin() + drop * D_);
    v_.erase(v_.begin(), v_.begin() + drop * D_);
    pos_.erase(pos_.begin(), pos_.begin() + drop);
  }

 private:
  int64_t D_, B_;
  std::vector<float> k_, v_;
  std::vector<int64_t> pos_;
};

double window_nll_oracle(const model::Model& m, const std::vector<int32_t>& ids, int64_t P, int64_t B, Backend b) {
  model::Runner r(m, b, [B](int64_t, int64_t, int64_t D, int64_t) { return std::make_unique<NewestCache>(D, B); });
  const int64_t T = static_cast<int64_t>(ids.size()), V = m.config.vocab_size;
  std::vector<std::vector<float>> at(static_cast<size_t>(T));
  const float* l = r.forward(ids.data(), P);
  at[static_cast<size_t>(P - 1)].assign(l, l + V);
  for (int64_t t = P; t < T - 1; ++t) {
    l = r.forward(&ids[static_cast<size_t>(t)], 1);
    at[static_cast<size_t>(t)].assign(l, l + V);
  }
  return mean_nll(at, ids, P);
}

// Mean over decode steps t = P..T-1 of (min(B, t) + 1) / (t + 1): B slots plus the new token.
double budget_ratio(int64_t P, int64_t T, int64_t B) {
  double s = 0;
  for (int64_t t = P; t < T; ++t) s += static_cast<double>(std::min(B, t) + 1) / static_cast<double>(t + 1);
  return s / static_cast<double>(T - P);
}

void check_rel(double x, double ref, double rtol, const char* what) {
  INFO(what << ": " << x << " vs oracle " << ref << ", rel diff " << std::abs(x - ref) / std::abs(ref));
  CHECK(std::abs(x - ref) <= rtol * std::abs(ref));
}

std::vector<Backend> cpu_backends() {
  std::vector<Backend> b{Backend::ref};
  if (backend_available(Backend::omp)) b.push_back(Backend::omp);
  return b;
}

// full and window against their oracles on one model and id sequence.
void check_full_and_window(const model::Model& m, const std::vector<int32_t>& ids, int64_t P,
                           std::initializer_list<int64_t> budgets) {
  const int64_t T = static_cast<int64_t>(ids.size());
  for (Backend b : cpu_backends()) {
    const std::string backend = backend_name(b);
    CAPTURE(backend);
    const double oracle = full_nll_one_forward(m, ids, P, b);
    const auto full = make_strategy("full");
    const model::PerplexityResult a = model::perplexity(m, ids, P, full.get(), b);
    const model::PerplexityResult plain = model::perplexity(m, ids, P, nullptr, b);
    CHECK(a.n_predicted == T - P);
    check_rel(a.nll, oracle, 1e-5, "full via the strategy cache: nll");
    check_rel(a.ppl, std::exp(oracle), 1e-5, "full via the strategy cache: ppl");
    check_rel(plain.ppl, std::exp(oracle), 1e-5, "plain runner, token by token: ppl");
    CHECK(a.mean_ratio == doctest::Approx(1.0).epsilon(1e-12));
    for (int64_t B : budgets) {
      CAPTURE(B);
      const auto w = make_strategy("window:budget=" + std::to_string(B));
      const model::PerplexityResult r = model::perplexity(m, ids, P, w.get(), b);
      check_rel(r.ppl, std::exp(window_nll_oracle(m, ids, P, B, b)), 1e-5, "window: ppl");
      CHECK(r.mean_ratio == doctest::Approx(budget_ratio(P, T, B)).epsilon(1e-12));
    }
  }
}

// Keeps every token and records what it is handed, per layer: k_norm [Hkv, T] and entropy [H, T]
// read at the step each token arrives (prefill: the prompt's), and the prompt's colsums [H, P].
struct ProbeLog {
  std::vector<std::vector<float>> k_norm, entropy, colsums;  // [L][...]
};

class ProbeState final : public StrategyState {
 public:
  ProbeState(ProbeLog* log, const InstanceContext& ctx) : log_(log), layer_(ctx.layer), T_(ctx.T) {}
  void prefill(std::span<SlotCache>, const LayerView& lv, int64_t P) override {
    H_ = lv.H, Hkv_ = lv.Hkv, k_norm_ = lv.k_norm, entropy_ = lv.entropy;
    log_->colsums[layer_].assign(lv.prompt_colsums, lv.prompt_colsums + H_ * P);
    log_->k_norm[layer_].assign(static_cast<size_t>(Hkv_ * T_), NAN);
    log_->entropy[layer_].assign(static_cast<size_t>(H_ * T_), NAN);
    for (int64_t t = 0; t < P; ++t) take(t);
  }
  void evict(std::span<SlotCache>, int64_t t) override { take(t); }

 private:
  void take(int64_t t) {
    for (int64_t kv = 0; kv < Hkv_; ++kv) log_->k_norm[layer_][kv * T_ + t] = k_norm_[kv * T_ + t];
    for (int64_t h = 0; h < H_; ++h) log_->entropy[layer_][h * T_ + t] = entropy_[h * T_ + t];
  }
  ProbeLog* log_;
  int64_t layer_, T_, H_ = 0, Hkv_ = 0;
  const float* k_norm_ = nullptr;
  const float* entropy_ = nullptr;
};

class ProbeStrategy final : public Strategy {
 public:
  explicit ProbeStrategy(ProbeLog* log) : log_(log) { name_ = spec_text_ = "probe"; }
  bool layer_coupled() const override { return true; }
  bool needs_prompt_colsums() const override { return true; }
  bool needs_entropy() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    return std::make_unique<ProbeState>(log_, ctx);
  }

 private:
  ProbeLog* log_;
};

}  // namespace

TEST_CASE("ppl: full and window through the strategy cache match their oracles (random model with G = 2)") {
  const model::Model m = small_model();
  const auto ids = small_ids(50);
  check_full_and_window(m, ids, 9, {3, 8, 20});
  check_full_and_window(m, ids, 1, {1, 5});  // a one-token prompt; a budget of one slot
}

TEST_CASE("ppl: stories260K full and window match their oracles within 1e-5") {
  KVSIM_REQUIRE_MODELS();
  const model::Model m = model::load_model(kvsim_test::stories_bin());
  const auto ids = stories_ids();
  REQUIRE(ids.size() > 100);
  check_full_and_window(m, ids, 24, {8, 32, 64});
  // A budget under the prompt: prefill compresses the cache, so ppl rises over full's.
  const auto w = make_strategy("window:budget=8");
  const auto r = model::perplexity(m, ids, 24, w.get(), Backend::ref);
  const auto f = model::perplexity(m, ids, 24, nullptr, Backend::ref);
  CHECK(r.ppl > f.ppl);
}

TEST_CASE("ppl: tova (layer-coupled) and a codec composition and entropy_merge and cms_aggregate run end to end") {
  const model::Model m = small_model();
  const auto ids = small_ids(48);
  const int64_t T = 48, P = 10;
  for (Backend b : cpu_backends()) {
    const std::string backend = backend_name(b);
    CAPTURE(backend);
    const auto full = make_strategy("full");
    const auto f = model::perplexity(m, ids, P, full.get(), b);
    // Nothing to evict: tova's slots are full's, in the same order, so attention is bit-identical.
    const auto tova_all = make_strategy("tova:budget=" + std::to_string(T));
    CHECK(model::perplexity(m, ids, P, tova_all.get(), b).nll == f.nll);
    // cms_aggregate with nothing evicted: depth 2 views over the same slots average to one softmax.
    const auto agg_all = make_strategy("cms_aggregate:budget=" + std::to_string(T));
    check_rel(model::perplexity(m, ids, P, agg_all.get(), b).nll, f.nll, 1e-9, "cms_aggregate, budget T");
    // tova holds B slots after every step (the newest token is kept): the ratio is known by hand.
    const auto tova = make_strategy("tova:budget=6");
    const auto rt = model::perplexity(m, ids, P, tova.get(), b);
    CHECK(std::isfinite(rt.ppl));
    CHECK(rt.mean_ratio == doctest::Approx(budget_ratio(P, T, 6)).epsilon(1e-12));
    // Quantized storage: fewer bytes than fp16 at the same slot count; finite perplexity.
    const auto q = make_strategy("window:budget=12+quant:bits=4");
    const auto rq = model::perplexity(m, ids, P, q.get(), b);
    CHECK(std::isfinite(rq.ppl));
    CHECK(rq.mean_ratio < budget_ratio(P, T, 12));
    CHECK(rq.mean_ratio > 0);
    const auto agg = make_strategy("cms_aggregate:budget=12,width=4");
    CHECK(std::isfinite(model::perplexity(m, ids, P, agg.get(), b).ppl));
    // entropy_merge reads each decode token's exact row entropy, computed live.
    const auto em = make_strategy("entropy_merge:budget=16,threshold=0.3");
    const auto re = model::perplexity(m, ids, P, em.get(), b);
    CHECK(std::isfinite(re.ppl));
    CHECK(re.mean_ratio < 1.0);
  }
}

TEST_CASE("ppl: stories260K every strategy family gives a finite perplexity and small budgets cost perplexity") {
  KVSIM_REQUIRE_MODELS();
  const model::Model m = model::load_model(kvsim_test::stories_bin());
  const auto ids = stories_ids();
  const int64_t P = 24;
  // omp for speed where it is built; the claim is about the strategies, not the backend
  const Backend b = backend_available(Backend::omp) ? Backend::omp : Backend::ref;
  const auto f = model::perplexity(m, ids, P, nullptr, b);
  for (const char* spec : {"h2o:budget=16", "tova:budget=16", "snapkv:budget=16,window=8", "knorm:budget=32",
                           "entropy_merge:budget=32", "cms_aggregate:budget=16", "kivi:bits=2", "h2o:budget=32+nf4"}) {
    CAPTURE(spec);
    const auto s = make_strategy(spec);
    const auto r = model::perplexity(m, ids, P, s.get(), b);
    CHECK(std::isfinite(r.ppl));
    CHECK(r.mean_ratio < 1.0);
  }
  const auto s = make_strategy("streaming:budget=8");
  CHECK(model::perplexity(m, ids, P, s.get(), b).ppl > f.ppl);
}

TEST_CASE("ppl: bad inputs are UsageErrors") {
  const model::Model m = small_model();
  const auto ids = small_ids(20);
  const auto w = make_strategy("window:budget=4");
  CHECK_THROWS_AS(model::perplexity(m, ids, 20, w.get(), Backend::ref), UsageError);  // P >= T
  CHECK_THROWS_AS(model::perplexity(m, ids, 0, nullptr, Backend::ref), UsageError);
  CHECK_THROWS_AS(model::perplexity(m, small_ids(65), 8, w.get(), Backend::ref), UsageError);  // > seq_len 64
  auto bad = ids;
  bad[3] = 97;
  CHECK_THROWS_AS(model::perplexity(m, bad, 8, w.get(), Backend::ref), UsageError);
  // A ratio resolves against T = 20: 2 slots cannot exceed sinks + recent = 8.
  const auto small = make_strategy("h2o:ratio=0.1,sinks=4,recent=4");
  CHECK_THROWS_AS(model::check_strategy_fits(*small, m.config, 20, 8), UsageError);
  CHECK_THROWS_AS(model::perplexity(m, ids, 8, small.get(), Backend::ref), UsageError);
  // The strategy cache takes the prompt in one call, then one token per call.
  model::StrategyCaches caches(*w, m.config, 20, 8, Backend::ref);
  model::Runner r(m, Backend::ref, caches.factory());
  CHECK_THROWS_AS(r.forward(ids.data(), 4), UsageError);
  r.reset();
  r.forward(ids.data(), 8);
  CHECK_THROWS_AS(r.forward(ids.data() + 8, 2), UsageError);
}

TEST_CASE("ppl: a strategy is handed k_norm and entropy of every token and the prompt's colsums") {
  const model::Model m = small_model();
  const model::ModelConfig& c = m.config;
  const auto ids = small_ids(40);
  const int64_t T = 40, P = 11, H = c.n_heads, Hkv = c.n_kv_heads, D = c.head_dim;
  for (Backend b : cpu_backends()) {
    const std::string backend = backend_name(b);
    CAPTURE(backend);
    ProbeLog log;
    log.k_norm.resize(c.n_layers), log.entropy.resize(c.n_layers), log.colsums.resize(c.n_layers);
    ProbeStrategy probe(&log);
    model::perplexity(m, ids, P, &probe, b);
    // Oracle: q, k of one forward over all T tokens, head-major, through the reference kernels.
    model::Runner plain(m, Backend::ref);
    plain.forward(ids.data(), T, false, [&](const model::LayerTensors& lt) {
      std::vector<float> q(H * T * D), k(Hkv * T * D), v(Hkv * T * D), k_norm(Hkv * T);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t x = 0; x < D; ++x) {
          for (int64_t h = 0; h < H; ++h) q[(h * T + t) * D + x] = lt.q[(t * H + h) * D + x];
          for (int64_t kv = 0; kv < Hkv; ++kv) {
            k[(kv * T + t) * D + x] = lt.k[(t * Hkv + kv) * D + x];
            v[(kv * T + t) * D + x] = lt.v[(t * Hkv + kv) * D + x];
          }
        }
      for (int64_t i = 0; i < Hkv * T; ++i) {
        double sq = 0;
        for (int64_t x = 0; x < D; ++x) sq += double(k[i * D + x]) * k[i * D + x];
        k_norm[i] = static_cast<float>(std::sqrt(sq));
      }
      LayerView lv;
      lv.H = H, lv.Hkv = Hkv, lv.T = T, lv.D = D, lv.q = q.data(), lv.k = k.data(), lv.v = v.data();
      ExactStats rs;
      compute_exact_stats(lv, Backend::ref, rs);
      std::vector<float> colsums;
      compute_prompt_colsums(lv, rs, P, Backend::ref, colsums);
      const size_t l = static_cast<size_t>(lt.layer);
      CAPTURE(l);
      // One batched ref forward vs prompt + one token at a time on `backend`: fp32 rounding of the
      // activations (omp: OpenBLAS sums in another order, seen up to 2.5e-5 after the x40 q/k weights).
      const double tol = b == Backend::ref ? 1e-5 : 1e-4;
      kvsim_test::check_close(log.k_norm[l].data(), k_norm.data(), Hkv * T, tol, tol, "k_norm");
      kvsim_test::check_close(log.entropy[l].data(), rs.entropy.data(), H * T, tol, tol, "entropy");
      kvsim_test::check_close(log.colsums[l].data(), colsums.data(), H * P, tol, tol, "prompt colsums");
    });
  }
}
