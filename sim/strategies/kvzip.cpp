// kvzip (Kim et al., "KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction", arXiv
// 2505.23416; reference code kvpress presses/kvzip_press.py, KVzipPress.compress_post). Each context
// token's score is the attention the model pays it while it is teacher-forced to repeat the context
// (the trace's kvzip_score [Hkv, T], recorded with kvsim record --record kvzip: traces/model/kvzip.h);
// the first `sinks` positions score 1 (the reference's n_sink). The cut drops the lowest scores across
// every layer and KV head at once (layerwise=0, the reference's default), or per layer (layerwise=1):
//   press_ratio=r: int(r · L · Hkv · P) pairs (int(r · Hkv · P) per layer), as the reference counts;
//   budget=B (or ratio=): L · Hkv · (P − B) pairs (Hkv · (P − B) per layer), so the cache holds B slots
//   per head on average, the matched memory of a per-head budget B.
// Ties: the later (layer, KV head, position) goes first (kvsim's rule: the lower position stays; the
// reference's torch.topk leaves them open). The cut spans every layer, so kvzip plans across layers
// (Strategy::needs_model_plan). KVzip compresses once, query-agnostic: protocol prefill (then every
// later token is appended; --prefill context compresses the context before the question); protocol
// evict is refused, since later tokens have no score. The scores cover the recorded context, so the
// replay must cut there. Bytes: one 4-byte length per head when a layer's heads hold different lengths
// (the flattened variable-length layout, ../shared/methods.md §1.3).
#include <algorithm>
#include <numeric>
#include <vector>

#include "sim/base/error.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

class Kvzip;

class KvzipState final : public VarlenState {
 public:
  KvzipState(const Kvzip& s, const InstanceContext& ctx) : s_(s), ctx_(ctx) {}
  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override;
  void evict(std::span<SlotCache>, int64_t) override {}  // protocol prefill only: nothing after the cut

 private:
  const Kvzip& s_;
  InstanceContext ctx_;
};

class Kvzip final : public Strategy {
 public:
  explicit Kvzip(ParamReader& p) {
    ev_.read(p, {});
    sinks_ = p.get_int("sinks", 4);
    layerwise_ = p.get_flag("layerwise", false);
    set_identity(p);
  }
  bool needs_model_plan() const override { return true; }
  bool needs_kvzip_score() const override { return true; }
  bool runs_under(Protocol p) const override { return p == Protocol::prefill; }
  // The layer's scores [Hkv, P], the first `sinks` set to 1.
  std::vector<double> layer_profile(const LayerView& lv, int64_t P) const override {
    if (lv.kvzip_score == nullptr)
      throw UsageError("strategy '" + spec_text() +
                       "' needs kvzip_score, KVzip's context-reconstruction scores (kvsim record --record kvzip)");
    if (P != lv.kvzip_context)
      throw UsageError("strategy '" + spec_text() + "': the trace's kvzip_score scores its context of " +
                       std::to_string(lv.kvzip_context) + " tokens, and this replay cuts at P = " + std::to_string(P) +
                       "; replay with --prefill " + std::to_string(lv.kvzip_context) +
                       " (or record it with --kvzip-context)");
    std::vector<double> out(static_cast<size_t>(lv.Hkv * P));
    for (int64_t kv = 0; kv < lv.Hkv; ++kv)
      for (int64_t i = 0; i < P; ++i) out[kv * P + i] = i < sinks_ ? 1.0 : lv.kvzip_score[kv * lv.T + i];
    return out;
  }
  // plan[(l * Hkv + kv) * P + i] = 1 when the layer's KV head keeps prompt token i.
  std::vector<double> make_plan(const std::vector<std::vector<double>>& profiles, int64_t T, int64_t P) const override {
    const int64_t L = static_cast<int64_t>(profiles.size()), per_layer = static_cast<int64_t>(profiles.at(0).size());
    std::vector<double> score;
    score.reserve(static_cast<size_t>(L * per_layer));
    for (const auto& p : profiles) score.insert(score.end(), p.begin(), p.end());
    std::vector<double> plan(score.size(), 1.0);
    // Drops the n lowest of score[lo, hi), the later index first among equal scores.
    const auto drop = [&](int64_t lo, int64_t hi, int64_t n) {
      n = std::min(n, hi - lo);
      if (n <= 0) return;
      std::vector<int64_t> idx(static_cast<size_t>(hi - lo));
      std::iota(idx.begin(), idx.end(), lo);
      std::nth_element(idx.begin(), idx.begin() + (n - 1), idx.end(),
                       [&](int64_t a, int64_t b) { return score[a] < score[b] || (score[a] == score[b] && a > b); });
      for (int64_t j = 0; j < n; ++j) plan[static_cast<size_t>(idx[static_cast<size_t>(j)])] = 0.0;
    };
    const auto n_drop = [&](int64_t pairs) {  // pairs: the scored (KV head, token) pairs in the cut
      if (ev_.press_ratio >= 0) return static_cast<int64_t>(static_cast<double>(pairs) * ev_.press_ratio);
      return pairs / P * std::max<int64_t>(0, P - ev_.resolve_budget(T, P));
    };
    if (layerwise_)
      for (int64_t l = 0; l < L; ++l) drop(l * per_layer, (l + 1) * per_layer, n_drop(per_layer));
    else
      drop(0, L * per_layer, n_drop(L * per_layer));
    return plan;
  }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    if (ctx.protocol == Protocol::evict)
      throw UsageError(
          "strategy '" + spec_text() +
          "': KVzip compresses the context once and scores no later token; run it with --protocol prefill");
    (void)ev_.resolve_budget(ctx.T, ctx.P);
    return std::make_unique<KvzipState>(*this, ctx);
  }

 private:
  EvictionParams ev_;
  int64_t sinks_ = 4;
  bool layerwise_ = false;
};

void KvzipState::prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) {
  std::vector<double> own;
  const std::vector<double>& plan = model_plan(s_, ctx_, lv, P, own);
  const int64_t Hkv = static_cast<int64_t>(plan.size()) / (ctx_.n_layers * P);
  const double* layer = plan.data() + ctx_.layer * Hkv * P;
  const auto kept = [&](int64_t kv) { return std::accumulate(layer + kv * P, layer + (kv + 1) * P, 0.0); };
  for (int64_t kv = 0; kv < Hkv; ++kv) varlen_ = varlen_ || kept(kv) != kept(ctx_.kv0);
  SlotCache& c = caches[0];
  const double* mine = layer + ctx_.kv0 * P;
  std::vector<uint8_t> keep(static_cast<size_t>(c.size()));
  for (int64_t s = 0; s < c.size(); ++s) keep[s] = mine[c.pos(s)] != 0;
  c.remove_unless(keep);
}

}  // namespace

std::unique_ptr<Strategy> make_kvzip(ParamReader& p) { return std::make_unique<Kvzip>(p); }

}  // namespace kvsim
