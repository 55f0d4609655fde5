// duoattention (Xiao et al., "DuoAttention: Efficient Long-Context LLM Inference with Retrieval and
// Streaming Heads", arXiv 2410.10819; reference code kvpress `presses/duo_attention_press.py`,
// DuoAttentionPress and duo_attention_on_the_fly). Every (layer, KV head) is a retrieval head, which
// keeps the whole cache, or a streaming head, which keeps the first `sink` and the last `recent`
// prompt tokens. The round(head_ratio · L · Hkv) heads with the lowest scores stream (ties: the lower
// layer, then the lower head). Scores per (layer, KV head):
//   on the fly (default; kvpress's duo_attention_on_the_fly): per query head, q̄ and k̄ = the means of
//     the pre-RoPE queries and of its KV head's pre-RoPE keys over the prompt (kvpress: over 50 BookSum
//     texts; kvsim: the replayed sequence's prompt, or the means of another trace fed in by a scores
//     file), Q_p = RoPE_p(q̄), K_p = RoPE_p(k̄) for p < q_len; a = softmax_p(Q_{q_len-1}·K_p/√D);
//     score = mean_p cumsum(a)_p (the area under the cumulated attention), averaged over the group;
//   scores=PATH: L rows of Hkv numbers (DuoAttention's full_attention_heads.tsv gate values, or the
//     scores a user's method learned; sim/strategies/head_scores.h), clipped to [0, 1] as
//     duo_attn.utils.load_attn_pattern.
// The choice spans every layer, so duoattention plans across layers (Strategy::needs_model_plan).
// Under protocol prefill the streaming heads cut the prompt once and then grow (kvpress); under
// protocol evict they slide, keeping the sinks and the newest tokens (DuoAttention's own decoding).
// Bytes: a layer whose KV heads hold different lengths adds one 4-byte length per head (the
// flattened variable-length layout, ../shared/methods.md §1.3).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "sim/base/error.h"
#include "sim/base/rope.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/head_scores.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

class Duo;

class DuoState final : public VarlenState {
 public:
  DuoState(const Duo& s, const InstanceContext& ctx) : s_(s), ctx_(ctx) {}
  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override;
  void evict(std::span<SlotCache> caches, int64_t t) override;
  std::vector<std::string> degeneracies(const SlotCache& cache, int64_t c) const override {
    if (!streaming_) return {};  // a retrieval head keeps everything by design
    return StrategyState::degeneracies(cache, c);
  }

 private:
  const Duo& s_;
  InstanceContext ctx_;
  bool streaming_ = false;
};

class Duo final : public Strategy {
 public:
  explicit Duo(ParamReader& p) {
    ratio_ = p.get_double("head_ratio", 0.5);
    if (!(ratio_ >= 0 && ratio_ <= 1))
      throw UsageError("strategy '" + p.spec().text + "': head_ratio=" + p.resolved().at("head_ratio") +
                       " must be in [0, 1]");
    sink_ = p.get_int("sink", 128);
    recent_ = p.get_int("recent", 256, IntRange{1, kMaxIntParam});
    q_len_ = p.get_int("q_len", 500, IntRange{1, kMaxIntParam});
    path_ = p.get_string("scores", "");
    if (!path_.empty()) read_scores(p.spec().text);
    set_identity(p);
  }
  bool needs_model_plan() const override { return true; }
  bool needs_pre_rope() const override { return path_.empty(); }
  bool needs_q_pre() const override { return path_.empty(); }

  // One score per KV head of the layer (zeros with a scores file: the plan reads the file).
  std::vector<double> layer_profile(const LayerView& lv, int64_t P) const override {
    std::vector<double> s(static_cast<size_t>(lv.Hkv), 0.0);
    if (!path_.empty()) return s;
    if (!lv.q_pre || !lv.k_pre)
      throw UsageError(
          "duoattention scores heads by their pre-RoPE queries and keys (q_pre, k_pre: record the "
          "trace with kvsim record --pre), or give scores=FILE");
    const int64_t D = lv.D, G = lv.G(), n = q_len_;
    std::vector<float> qm(static_cast<size_t>(D)), km(static_cast<size_t>(n * D));
    std::vector<double> z(static_cast<size_t>(n));
    for (int64_t kv = 0; kv < lv.Hkv; ++kv) {
      std::vector<double> mean(static_cast<size_t>(D), 0.0);
      for (int64_t i = 0; i < P; ++i)
        for (int64_t x = 0; x < D; ++x) mean[x] += lv.k_pre_head(kv)[i * D + x];
      for (int64_t p = 0; p < n; ++p)  // K_p = RoPE_p(k̄)
        for (int64_t x = 0; x < D; ++x) km[p * D + x] = static_cast<float>(mean[x] / static_cast<double>(P));
      apply_rope(km.data(), n, D, 0, lv.rope_theta, lv.rope_style);
      for (int64_t g = 0; g < G; ++g) {
        const float* q = lv.q_pre + (kv * G + g) * lv.T * D;
        std::fill(mean.begin(), mean.end(), 0.0);
        for (int64_t i = 0; i < P; ++i)
          for (int64_t x = 0; x < D; ++x) mean[x] += q[i * D + x];
        for (int64_t x = 0; x < D; ++x) qm[x] = static_cast<float>(mean[x] / static_cast<double>(P));
        apply_rope(qm.data(), 1, D, n - 1, lv.rope_theta, lv.rope_style);  // Q_{q_len - 1}
        double mx = -INFINITY;
        for (int64_t p = 0; p < n; ++p) {
          double d = 0;
          for (int64_t x = 0; x < D; ++x) d += static_cast<double>(qm[x]) * km[p * D + x];
          z[p] = d / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, z[p]);
        }
        double sum = 0;
        for (double& e : z) sum += (e = std::exp(e - mx));
        double cum = 0, area = 0;
        for (int64_t p = 0; p < n; ++p) area += (cum += z[p] / sum);
        s[kv] += area / static_cast<double>(n) / static_cast<double>(G);
      }
    }
    return s;
  }

  // plan[l * Hkv + kv] = 1 for a streaming head, 0 for a retrieval head.
  std::vector<double> make_plan(const std::vector<std::vector<double>>& profiles, int64_t, int64_t) const override {
    const int64_t L = static_cast<int64_t>(profiles.size()), Hkv = static_cast<int64_t>(profiles.at(0).size());
    std::vector<double> score;
    if (path_.empty()) {
      for (const auto& p : profiles) score.insert(score.end(), p.begin(), p.end());
    } else {
      check_file_shape(L, Hkv);
      score = file_;
    }
    const int64_t n = L * Hkv, pruned = static_cast<int64_t>(std::nearbyint(ratio_ * static_cast<double>(n)));
    std::vector<int64_t> idx(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), int64_t{0});
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return score[a] < score[b]; });
    std::vector<double> plan(static_cast<size_t>(n), 0.0);
    for (int64_t k = 0; k < pruned; ++k) plan[idx[k]] = 1.0;
    return plan;
  }

  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    if (!path_.empty() && file_rows_ != ctx.n_layers)
      throw UsageError("strategy '" + spec_text() + "': " + path_ + " has " + std::to_string(file_rows_) +
                       " rows of head scores, the model has " + std::to_string(ctx.n_layers) + " layers");
    return std::make_unique<DuoState>(*this, ctx);
  }
  int64_t sink() const { return sink_; }
  int64_t recent() const { return recent_; }

 private:
  void read_scores(const std::string& spec) {
    const HeadScores f = read_head_scores(path_, "strategy '" + spec + "'");
    file_rows_ = f.rows, file_cols_ = f.cols;
    for (double v : f.value) file_.push_back(std::clamp(v, 0.0, 1.0));
  }
  void check_file_shape(int64_t L, int64_t Hkv) const {
    if (file_rows_ != L || file_cols_ != Hkv)
      throw UsageError("strategy '" + spec_text() + "': " + path_ + " holds " + std::to_string(file_rows_) + " x " +
                       std::to_string(file_cols_) + " head scores, the model has " + std::to_string(L) + " layers x " +
                       std::to_string(Hkv) + " KV heads");
  }

  double ratio_ = 0.5;
  int64_t sink_ = 128, recent_ = 256, q_len_ = 500;
  std::string path_;
  std::vector<double> file_;  // [rows, cols], clipped to [0, 1]
  int64_t file_rows_ = 0, file_cols_ = -1;
};

void DuoState::prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) {
  std::vector<double> own;
  const std::vector<double>& plan = model_plan(s_, ctx_, lv, P, own);
  const int64_t Hkv = static_cast<int64_t>(plan.size()) / ctx_.n_layers;
  const double* layer = plan.data() + ctx_.layer * Hkv;
  streaming_ = layer[ctx_.kv0] > 0.5;
  // Heads of both kinds in the layer hold different lengths once the streaming ones cut or slide.
  varlen_ = std::find(layer, layer + Hkv, layer[0] > 0.5 ? 0.0 : 1.0) != layer + Hkv &&
            (P > s_.sink() + s_.recent() || ctx_.protocol == Protocol::evict);
  if (streaming_) evict(caches, P - 1);
}

void DuoState::evict(std::span<SlotCache> caches, int64_t t) {
  if (!streaming_) return;
  SlotCache& c = caches[0];
  // The oldest token past the sinks goes first: the first `sink` and the newest `recent` stay.
  evict_lowest(c, s_.sink() + s_.recent(), t, s_.sink(), 0, [&](int64_t s) { return double(c.pos(s)); });
}

}  // namespace

std::unique_ptr<Strategy> make_duoattention(ParamReader& p) { return std::make_unique<Duo>(p); }

}  // namespace kvsim
