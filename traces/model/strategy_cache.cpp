#include "traces/model/strategy_cache.h"

#include <algorithm>
#include <cmath>
#include <span>

#include "sim/base/error.h"
#include "sim/exact_stats.h"
#include "sim/instance.h"
#include "sim/kernels/kernels.h"
#include "traces/model/vo_norm.h"

namespace kvsim::model {

namespace {

float key_norm(const float* k, int64_t D) {  // as the replay computes LayerView::k_norm
  double s = 0;
  for (int64_t x = 0; x < D; ++x) s += static_cast<double>(k[x]) * k[x];
  return static_cast<float>(std::sqrt(s));
}

// Entropy (nats) of softmax_i(q·k_i / sqrt(D)) over the n keys: the reference statistics' entropy
// (ref::attn_stats: lse - sum p z) of one query row.
float exact_row_entropy(const float* q,  // [D]
                        const float* k,  // [n, D]
                        int64_t n, int64_t D, std::vector<double>& z) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  z.resize(static_cast<size_t>(n));
  double mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    double d = 0;
    for (int64_t x = 0; x < D; ++x) d += static_cast<double>(q[x]) * k[i * D + x];
    z[i] = d * scale;
    mx = std::max(mx, z[i]);
  }
  double l = 0, a = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double e = std::exp(z[i] - mx);
    l += e;
    a += e * z[i];
  }
  return static_cast<float>(std::max(0.0, mx + std::log(l) - a / l));
}

}  // namespace

// The sequence's cross-layer plan (Strategy::needs_model_plan), shared by the layers: each layer
// leaves its prompt's profile here at the end of the prompt's forward pass; the plan is made once
// every layer has, before the first layer is cut (at the first decode token).
struct PlanBoard {
  std::vector<std::vector<double>> profiles;  // [L]
  std::vector<uint8_t> profiled;              // [L]
  std::vector<double> plan;                   // InstanceContext::plan of every instance
  bool made = false;
};

// The instances of one layer (sim/instance.h: slots, codec and strategy states), shared by its Hkv
// KvCache proxies: KV head kv is cache kv % per_state of instance kv / per_state, or under gqa=none
// (one cache per query head) caches 0..G-1 of instance kv.
class StrategyLayer {
 public:
  StrategyLayer(const Strategy& s, const ModelConfig& c, int64_t layer, int64_t T, int64_t P, Backend b,
                Protocol protocol, const StepHook* hook, const float* wo, PlanBoard* board)
      : strat_(s), protocol_(protocol), layer_(layer), H_(c.n_heads), Hkv_(c.n_kv_heads), G_(c.n_heads / c.n_kv_heads),
        D_(c.head_dim), T_(T), P_(P), dim_(c.dim), backend_(b), attend_fn_(kernels(b).attend_slots), hook_(hook),
        wo_(wo), board_(board), shape_{c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim},
        per_state_(s.layer_coupled() ? c.n_kv_heads : 1) {
    reset();
  }

  // A new sequence: fresh slots, codec and strategy states (idempotent until the next append).
  void reset() {
    if (fresh_) return;
    insts_.clear();
    for (int64_t i = 0; i < instances_per_layer(strat_, Hkv_); ++i)
      insts_.push_back(std::make_unique<Instance>(
          strat_, make_context(strat_, shape_, layer_, i, T_, P_, protocol_, board_ ? &board_->plan : nullptr)));
    if (board_) {  // a new sequence: this layer's profile is to be made again, and so is the plan
      board_->profiles[static_cast<size_t>(layer_)].clear();
      board_->profiled[static_cast<size_t>(layer_)] = 0;
      board_->plan.clear(), board_->made = false;
    }
    q_.assign(static_cast<size_t>(H_ * T_ * D_), 0.0f);
    k_.assign(static_cast<size_t>(Hkv_ * T_ * D_), 0.0f);
    v_.assign(k_.size(), 0.0f);
    k_norm_.assign(static_cast<size_t>(Hkv_ * T_), 0.0f);
    entropy_.assign(strat_.needs_entropy() ? static_cast<size_t>(H_ * T_) : 0, 0.0f);
    prompt_pos_.resize(static_cast<size_t>(P_));
    for (int64_t t = 0; t < P_; ++t) prompt_pos_[t] = t;
    slot_pos_.assign(static_cast<size_t>(Hkv_), {});
    lv_ = LayerView{};
    prefilled_ = false, profiled_ = false, next_t_ = 0, ended_ = 0, ratio_sum_ = 0, ratio_n_ = 0;
    fresh_ = true;
  }

  void append(int64_t kv, const float* k, const float* v, int64_t n_tok, int64_t pos0) {
    fresh_ = false;
    if (!prefilled_ && profiled_ && pos0 == P_) prefill();  // the cut deferred for the plan
    if (!prefilled_ && (pos0 != 0 || n_tok != P_))
      throw UsageError("strategy cache: the prompt (P = " + std::to_string(P_) +
                       " tokens) must come in one forward call at position 0, got " + std::to_string(n_tok) +
                       " tokens at position " + std::to_string(pos0));
    if (prefilled_ && (n_tok != 1 || pos0 != next_t_ || pos0 >= T_))
      throw UsageError("strategy cache: decode tokens come one per forward call at positions " + std::to_string(P_) +
                       ".." + std::to_string(T_ - 1) + ", got " + std::to_string(n_tok) + " tokens at position " +
                       std::to_string(pos0));
    for (int64_t i = 0; i < n_tok; ++i) {
      const int64_t t = pos0 + i;
      const float* kt = k + i * D_;
      const float* vt = v + i * D_;
      k_norm_[kv * T_ + t] = key_norm(kt, D_);
      if (!prefilled_ || !entropy_.empty()) std::copy_n(kt, D_, k_.data() + (kv * T_ + t) * D_);
      if (!prefilled_) std::copy_n(vt, D_, v_.data() + (kv * T_ + t) * D_);
      Instance& in = inst(kv);
      if (in.context().per_query_head)
        for (int64_t c = 0; c < in.n_caches(); ++c) in.store(c, t, kt, vt);
      else
        in.store(kv % per_state_, t, kt, vt);
    }
  }

  // Before prefill: the exact prompt (the prompt's attention runs over the full cache). After: the
  // slots (bias included, alternative views not expressible; the runner uses attend() then).
  KvView view(int64_t kv) const {
    if (!prefilled_) return KvView{k_.data() + kv * T_ * D_, v_.data() + kv * T_ * D_, nullptr, prompt_pos_.data(), P_};
    // Under gqa=none each query head has its own cache: attend() (which returns true) is used then.
    KVSIM_ASSERT(!inst(kv).context().per_query_head);
    const SlotCache& c = inst(kv).cache(kv % per_state_);
    auto& pos = slot_pos_[kv];
    pos.resize(static_cast<size_t>(c.size()));
    for (int64_t s = 0; s < c.size(); ++s) pos[s] = c.member(s, c.n_members(s) - 1);
    return KvView{c.keys(), c.values(), c.biases(), pos.data(), c.size()};
  }

  bool attend(int64_t kv, const float* q, int64_t stride, int64_t Tq, int64_t G, int64_t pos0, float* o) {
    KVSIM_ASSERT(G == G_);
    if (!prefilled_) {  // keep the prompt's queries for prefill(); the runner attends over view()
      for (int64_t t = 0; t < Tq; ++t)
        for (int64_t g = 0; g < G_; ++g)
          std::copy_n(q + t * stride + g * D_, D_, q_.data() + ((kv * G_ + g) * T_ + pos0 + t) * D_);
      return false;
    }
    KVSIM_ASSERT(Tq == 1);
    const int64_t t = pos0;
    if (strat_.needs_queries())  // row t of q, read by the strategy from step t on (rkv's window)
      for (int64_t g = 0; g < G_; ++g) std::copy_n(q + g * D_, D_, q_.data() + ((kv * G_ + g) * T_ + t) * D_);
    Instance& in = inst(kv);
    if (in.context().per_query_head) {  // query head g reads cache g alone
      for (int64_t g = 0; g < G_; ++g) in.attend(g, t, attend_fn_, q + g * D_, D_, o + g * D_);
    } else {
      in.attend(kv % per_state_, t, attend_fn_, q, D_, o);
    }
    ratio_sum_ += cache_ratio(in.kv_bytes(kv % per_state_), D_, t);
    ++ratio_n_;
    for (int64_t g = 0; g < G_ && !entropy_.empty(); ++g)
      entropy_[(kv * G_ + g) * T_ + t] = exact_row_entropy(q + g * D_, k_.data() + kv * T_ * D_, t + 1, D_, z_);
    return true;
  }

  // Once every KV head of the layer has attended: prefill (after the prompt), or observe + evict.
  void end_step() {
    if (++ended_ < Hkv_) return;
    ended_ = 0;
    if (!prefilled_) {
      if (board_) {  // profile now, cut at the first decode token, once every layer has profiled
        profile();
        return;
      }
      prefill();
      return;
    }
    for (auto& in : insts_) {
      if (*hook_) (*hook_)(layer_, *in, next_t_);
      in->finish_step(next_t_);
    }
    ++next_t_;
  }

  double ratio_sum() const { return ratio_sum_; }
  int64_t ratio_n() const { return ratio_n_; }

 private:
  void prefill();
  void profile();
  Instance& inst(int64_t kv) { return *insts_[static_cast<size_t>(kv / per_state_)]; }
  const Instance& inst(int64_t kv) const { return *insts_[static_cast<size_t>(kv / per_state_)]; }

  const Strategy& strat_;
  const Protocol protocol_;
  const int64_t layer_, H_, Hkv_, G_, D_, T_, P_, dim_;
  const Backend backend_;
  const AttendSlotsFn attend_fn_;
  const StepHook* hook_;
  const float* wo_;   // the layer's o_proj [dim, H*D] when the strategy needs_vo_norm, else null
  PlanBoard* board_;  // the shared plan when the strategy needs_model_plan, else null
  const ModelShape shape_;
  const int64_t per_state_;  // caches per instance: Hkv for layer-coupled strategies, else 1
  std::vector<std::unique_ptr<Instance>> insts_;
  // The prompt's q [H, T, D], k and v [Hkv, T, D] (rows < P; q keeps the decode queries when the
  // strategy needs_queries, k the decode keys when it needs entropy), per-token k_norm [Hkv, T] and
  // entropy [H, T], colsums [H, P], vo_norm [H, T] (rows < P, at prefill only).
  std::vector<float> q_, k_, v_, k_norm_, entropy_, colsums_, vo_norm_;
  LayerView lv_;
  std::vector<int64_t> prompt_pos_;
  mutable std::vector<std::vector<int64_t>> slot_pos_;
  std::vector<double> z_;
  bool prefilled_ = false, fresh_ = false, profiled_ = false;
  int64_t next_t_ = 0, ended_ = 0;
  double ratio_sum_ = 0;
  int64_t ratio_n_ = 0;
};

void StrategyLayer::profile() {
  LayerView lp;  // the prompt's q, k, v (rows < P of the [heads, T, D] buffers)
  lp.H = H_, lp.Hkv = Hkv_, lp.T = T_, lp.D = D_, lp.q = q_.data(), lp.k = k_.data(), lp.v = v_.data();
  board_->profiles[static_cast<size_t>(layer_)] = strat_.layer_profile(lp, P_);
  board_->profiled[static_cast<size_t>(layer_)] = 1;
  profiled_ = true;
}

void StrategyLayer::prefill() {
  if (board_ && !board_->made) {
    if (std::find(board_->profiled.begin(), board_->profiled.end(), 0) != board_->profiled.end())
      throw UsageError("strategy cache: '" + strat_.spec_text() +
                       "' plans across layers, and a layer's prompt was not seen before the first decode token");
    board_->plan = strat_.make_plan(board_->profiles, T_, P_);
    board_->made = true;
  }
  const bool colsums = strat_.needs_prompt_colsums(), entropy = !entropy_.empty();
  if (colsums || entropy) {
    // The reference kernels on the prompt alone (T = P, dense [heads, P, D] copies).
    std::vector<float> q(static_cast<size_t>(H_ * P_ * D_)), k(static_cast<size_t>(Hkv_ * P_ * D_)), v(k.size());
    for (int64_t h = 0; h < H_; ++h) std::copy_n(q_.data() + h * T_ * D_, P_ * D_, q.data() + h * P_ * D_);
    for (int64_t kv = 0; kv < Hkv_; ++kv) {
      std::copy_n(k_.data() + kv * T_ * D_, P_ * D_, k.data() + kv * P_ * D_);
      std::copy_n(v_.data() + kv * T_ * D_, P_ * D_, v.data() + kv * P_ * D_);
    }
    LayerView lp;
    lp.H = H_, lp.Hkv = Hkv_, lp.T = P_, lp.D = D_, lp.q = q.data(), lp.k = k.data(), lp.v = v.data();
    ExactStats rs;
    compute_exact_stats(lp, backend_, rs);
    if (entropy)
      for (int64_t h = 0; h < H_; ++h) std::copy_n(rs.entropy.data() + h * P_, P_, entropy_.data() + h * T_);
    if (colsums) compute_prompt_colsums(lp, rs, P_, backend_, colsums_);
  }
  lv_.H = H_, lv_.Hkv = Hkv_, lv_.T = T_, lv_.D = D_;
  lv_.q = q_.data(), lv_.k = k_.data(), lv_.v = v_.data(), lv_.k_norm = k_norm_.data();
  lv_.prompt_colsums = colsums ? colsums_.data() : nullptr;
  lv_.entropy = entropy ? entropy_.data() : nullptr;
  if (wo_) {  // ||W_o,h v_i||_1 of the prompt's tokens, as the recorder computes it (token-major v)
    std::vector<float> vt(static_cast<size_t>(P_ * Hkv_ * D_)), n(static_cast<size_t>(H_ * P_));
    for (int64_t kv = 0; kv < Hkv_; ++kv)
      for (int64_t t = 0; t < P_; ++t)
        std::copy_n(v_.data() + (kv * T_ + t) * D_, D_, vt.data() + (t * Hkv_ + kv) * D_);
    vo_norm(wo_, vt.data(), P_, H_, Hkv_, D_, dim_, n.data());
    vo_norm_.assign(static_cast<size_t>(H_ * T_), 0.0f);
    for (int64_t h = 0; h < H_; ++h) std::copy_n(n.data() + h * P_, P_, vo_norm_.data() + h * T_);
    lv_.vo_norm = vo_norm_.data();
  }
  for (auto& in : insts_) in->prefill(lv_);
  std::vector<float>().swap(vo_norm_);
  lv_.vo_norm = nullptr;
  // Strategies read q, k, v in prefill only (sim/strategies/strategy.h); k stays for the decode
  // entropies, q for a strategy that reads decode queries (needs_queries: attend() fills row t).
  if (!strat_.needs_queries()) {
    std::vector<float>().swap(q_);
    lv_.q = nullptr;
  }
  std::vector<float>().swap(v_);
  if (!entropy) std::vector<float>().swap(k_);
  lv_.k = lv_.v = nullptr;
  prefilled_ = true;
  next_t_ = P_;
}

namespace {

// One (layer, KV head) as the runner sees it.
class StrategyKvCache final : public KvCache {
 public:
  StrategyKvCache(std::shared_ptr<StrategyLayer> layer, int64_t kv) : layer_(std::move(layer)), kv_(kv) {}
  void clear() override { layer_->reset(); }
  void append(const float* k, const float* v, int64_t n_tok, int64_t pos0) override {
    layer_->append(kv_, k, v, n_tok, pos0);
  }
  KvView view() const override { return layer_->view(kv_); }
  bool attend(const float* q, int64_t stride, int64_t T, int64_t G, int64_t pos0, float* o) override {
    return layer_->attend(kv_, q, stride, T, G, pos0, o);
  }
  void end_step() override { layer_->end_step(); }

 private:
  std::shared_ptr<StrategyLayer> layer_;
  int64_t kv_;
};

}  // namespace

void check_strategy_fits(const Strategy& strategy, const ModelConfig& config, int64_t T, int64_t P, Protocol protocol,
                         const Model* weights) {
  check_fits(strategy, ModelShape{config.n_layers, config.n_heads, config.n_kv_heads, config.head_dim}, T, P, protocol);
  if (strategy.needs_q_pre())
    throw UsageError(
        "strategy cache: '" + strategy.spec_text() +
        "' needs pre-RoPE queries, which the live model cache does not keep; replay it with kvsim run on "
        "a trace recorded with --pre" +
        (strategy.name() == "duoattention" ? ", or give it head scores (scores=FILE, from kvsim heads)" : ""));
  if (strategy.needs_vo_norm() && weights == nullptr)
    throw UsageError("strategy cache: '" + strategy.spec_text() +
                     "' needs vo_norm (||W_o,h v_i||_1), and no model weights were given to compute it from o_proj");
  if (strategy.needs_kvzip_score())
    throw UsageError("strategy cache: '" + strategy.spec_text() +
                     "' needs KVzip's context-reconstruction scores, which come from extra repeat passes over the "
                     "prompt that the live model cache does not run; replay it with kvsim run on a trace recorded "
                     "with --record kvzip");
  if (strategy.needs_pre_rope())
    throw UsageError("strategy cache: '" + strategy.spec_text() +
                     "' needs pre-RoPE keys, which the live model cache does not keep; replay it with kvsim run on "
                     "a trace recorded with --pre");
}

StrategyCaches::StrategyCaches(const Strategy& strategy, const ModelConfig& config, int64_t T, int64_t P,
                               Backend backend, Protocol protocol, const Model* weights)
    : strategy_(strategy), config_(config), T_(T), P_(P), backend_(backend), protocol_(protocol), weights_(weights) {
  if (backend != Backend::ref && backend != Backend::omp)
    throw NotCompiled(std::string("strategy cache: backend ") + backend_name(backend) + " is not supported (ref, omp)");
  check_strategy_fits(strategy, config, T, P, protocol, weights);
  layers_.resize(static_cast<size_t>(config.n_layers));
  if (strategy.needs_model_plan()) {
    board_ = std::make_unique<PlanBoard>();
    board_->profiles.resize(static_cast<size_t>(config.n_layers));
    board_->profiled.assign(static_cast<size_t>(config.n_layers), 0);
  }
}

StrategyCaches::~StrategyCaches() = default;

KvCacheFactory StrategyCaches::factory() {
  return [this](int64_t layer, int64_t kv_head, int64_t D, int64_t) -> std::unique_ptr<KvCache> {
    KVSIM_ASSERT(layer >= 0 && layer < config_.n_layers && D == config_.head_dim);
    auto& l = layers_[static_cast<size_t>(layer)];
    if (!l) {
      const float* wo = nullptr;
      if (strategy_.needs_vo_norm()) {
        KVSIM_ASSERT(weights_ && static_cast<int64_t>(weights_->layers.size()) == config_.n_layers);
        wo = weights_->layers[static_cast<size_t>(layer)].wo.data();
      }
      l = std::make_shared<StrategyLayer>(strategy_, config_, layer, T_, P_, backend_, protocol_, &hook_, wo,
                                          board_.get());
    }
    return std::make_unique<StrategyKvCache>(l, kv_head);
  };
}

double StrategyCaches::mean_ratio() const {
  double s = 0;
  int64_t n = 0;
  for (const auto& l : layers_)
    if (l) s += l->ratio_sum(), n += l->ratio_n();
  return n > 0 ? s / static_cast<double>(n) : NAN;
}

int64_t StrategyCaches::decode_steps() const {
  return layers_.empty() || !layers_[0] ? 0 : layers_[0]->ratio_n() / config_.n_kv_heads;
}

}  // namespace kvsim::model
