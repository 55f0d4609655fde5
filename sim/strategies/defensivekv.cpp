// defensivekv (Feng et al., "Taming the Fragility of KV Cache Eviction in LLM Inference", arXiv 2510.13334;
// reference code FFY0/DefensiveKV kvpress/presses/efficient_defensivekv_press.py, EfficientDefensiveKVPress,
// inside efficient_ada_scorer_press.py's layer-wide cut). At the end of the prompt, per layer, with w the
// window and n = P − w the past tokens:
//   1. A[h, j, i]: the attention of the last w prompt queries j of every query head h over keys 0..j; its
//      past columns i < n. window_bias = the mean over the layer's query heads and window rows of the mass on
//      the last w past columns (the reference slices the past columns first, then sums their last w);
//   2. each row is avg-pooled over `kernel` (zero padding, divided by the kernel) and rescaled to the row's
//      own past mass;
//   3. defensive aggregation: d_i = the max over the group's query heads and the window rows, then
//      d_i = max(d_i, mean_i d);
//   4. (vnorm=1) d_i · n_i, n_i = the group's mean of the trace's ||W_o,h v_i||_1 (vo_norm) over its sum
//      over the layer's KV heads;
//   5. forced: per KV head, the first `count` tokens by ā (A unsmoothed, averaged over the group and the
//      window, normalised per head), count = the first index where their cumulative mass reaches
//      mass − window_bias (0 when it never does), at most B − w; they and the window score the layer's
//      maximum;
//   6. the layer keeps its best Hkv·B scores across all its KV heads (press_ratio=r: int(P·(1 − r)·Hkv), the
//      reference's count); ties: the higher score, then the window's and stage 1's tokens (the reference
//      scores them the maximum "to make sure the window is not pruned"; its topk leaves ties open), the lower
//      position, the lower head.
// A budget allocator's cache (sim/strategies/allocator.h): under protocol prefill every later token is
// appended; under evict the chosen prompt tokens stay and the window and new tokens slide within each head's
// budget. Bytes: 4·D per slot, plus a 4-byte length per head when the layer's heads hold different lengths.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "sim/strategies/allocator.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

struct Params {
  int64_t window = 32, kernel = 5;
  double mass = 0.9, press_ratio = -1;
  bool vnorm = true;
};

// The per-head view AllocatorState asks for: the window forced, the budget B; the scores are the layer's
// and are formed in DefensiveState::choose.
class WindowOnly final : public StrategyState {
 public:
  WindowOnly(int64_t B, int64_t w) : B_(B), w_(w) {}
  void prefill(std::span<SlotCache>, const LayerView&, int64_t) override {}
  void evict(std::span<SlotCache>, int64_t) override {}
  void prompt_scores(const SlotCache&, const LayerView&, int64_t P, PromptScores& out) override {
    out.score.assign(static_cast<size_t>(P), 0.0);
    out.forced.assign(static_cast<size_t>(P), 0);
    for (int64_t i = std::max<int64_t>(0, P - w_); i < P; ++i) out.forced[i] = 1;
    out.keep = B_;
  }

 private:
  int64_t B_, w_;
};

class DefensiveState final : public AllocatorState {
 public:
  DefensiveState(std::vector<std::unique_ptr<StrategyState>> base, const Params& o, int64_t kv0)
      : AllocatorState(std::move(base)), o_(o), kv0_(kv0) {}

 protected:
  void choose(std::vector<PromptScores>& ps, int64_t P, std::vector<std::vector<uint8_t>>& keep) override;

 private:
  Params o_;
  int64_t kv0_;
};

void DefensiveState::choose(std::vector<PromptScores>& ps, int64_t P, std::vector<std::vector<uint8_t>>& keep) {
  const LayerView& lv = view();
  const auto Hkv = static_cast<int64_t>(ps.size());
  const int64_t G = lv.G(), w = std::min(o_.window, P), n = P - w, B = std::min(ps[0].keep, P), half = o_.kernel / 2;
  std::vector<double> d(static_cast<size_t>(Hkv * n), 0.0), ave(static_cast<size_t>(Hkv * n), 0.0),
      pooled(static_cast<size_t>(n));
  std::vector<float> rows;
  double bias = 0;
  for (int64_t kv = 0; kv < Hkv; ++kv)
    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = (kv0_ + kv) * G + g;
      prompt_attention_rows(lv, HeadGroup{kv0_ + kv, h, 1}, P, P - w, P, Gqa::mean, rows);
      for (int64_t r = 0; r < w; ++r) {
        const float* a = rows.data() + r * P;
        double base = 0, psum = 0;
        for (int64_t i = 0; i < n; ++i) base += a[i], ave[kv * n + i] += a[i] / static_cast<double>(G * w);
        for (int64_t i = std::max<int64_t>(0, n - w); i < n; ++i) bias += a[i];
        for (int64_t i = 0; i < n; ++i) {
          double s = 0;
          for (int64_t u = std::max<int64_t>(0, i - half); u <= std::min(n - 1, i + half); ++u) s += a[u];
          pooled[i] = s / static_cast<double>(o_.kernel);
          psum += pooled[i];
        }
        for (int64_t i = 0; i < n; ++i)
          d[kv * n + i] = std::max(d[kv * n + i], psum > 0 ? pooled[i] / psum * base : 0.0);
      }
    }
  const double window_bias = bias / static_cast<double>(Hkv * G * w);
  for (int64_t kv = 0; kv < Hkv && n > 0; ++kv) {
    const double mean = std::accumulate(d.begin() + kv * n, d.begin() + (kv + 1) * n, 0.0) / static_cast<double>(n);
    for (int64_t i = 0; i < n; ++i) d[kv * n + i] = std::max(d[kv * n + i], mean);
  }
  if (o_.vnorm) {
    KVSIM_ASSERT(lv.vo_norm != nullptr);
    std::vector<double> nbar(static_cast<size_t>(Hkv * n), 0.0);
    for (int64_t kv = 0; kv < Hkv; ++kv)
      for (int64_t g = 0; g < G; ++g)
        for (int64_t i = 0; i < n; ++i)
          nbar[kv * n + i] += lv.vo_norm[((kv0_ + kv) * G + g) * lv.T + i] / static_cast<double>(G);
    for (int64_t i = 0; i < n; ++i) {
      double sum = 0;
      for (int64_t kv = 0; kv < Hkv; ++kv) sum += nbar[kv * n + i];
      for (int64_t kv = 0; kv < Hkv; ++kv) d[kv * n + i] *= sum > 0 ? nbar[kv * n + i] / sum : 0.0;
    }
  }
  const double top = n > 0 ? *std::max_element(d.begin(), d.end()) : 1.0;
  // Stage 1: per head, the smallest set by ā whose mass reaches mass − window_bias, at most B − w.
  const double threshold = o_.mass - window_bias;
  const int64_t cap = std::max<int64_t>(0, B - w);
  std::vector<double> score(static_cast<size_t>(Hkv * P), top);  // the window scores the maximum
  std::vector<uint8_t> pinned(static_cast<size_t>(Hkv * P), 1);  // the window and stage 1's tokens
  for (int64_t kv = 0; kv < Hkv; ++kv) {
    std::copy(d.begin() + kv * n, d.begin() + (kv + 1) * n, score.begin() + kv * P);
    std::fill(pinned.begin() + kv * P, pinned.begin() + kv * P + n, 0);
    const double total = std::accumulate(ave.begin() + kv * n, ave.begin() + (kv + 1) * n, 0.0);
    std::vector<int32_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return ave[kv * n + a] > ave[kv * n + b]; });
    int64_t count = 0;
    double cum = 0;
    for (int64_t r = 0; r < n; ++r) {
      cum += total > 0 ? ave[kv * n + order[r]] / total : 0.0;
      if (cum >= threshold) {
        count = r;  // the reference's argmax of (cumsum >= threshold): the index where it is first reached
        break;
      }
    }
    for (int64_t r = 0; r < std::min(count, cap); ++r) score[kv * P + order[r]] = top, pinned[kv * P + order[r]] = 1;
  }
  // The layer's best across heads.
  const int64_t n_total =
      o_.press_ratio >= 0
          ? static_cast<int64_t>(static_cast<double>(P) * (1.0 - o_.press_ratio) * static_cast<double>(Hkv))
          : Hkv * B;
  std::vector<int64_t> idx(static_cast<size_t>(Hkv * P));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
    if (score[a] != score[b]) return score[a] > score[b];
    if (pinned[a] != pinned[b]) return pinned[a] > pinned[b];
    return a % P != b % P ? a % P < b % P : a / P < b / P;
  });
  for (auto& k : keep) std::fill(k.begin(), k.end(), 0);
  for (int64_t r = 0; r < std::min<int64_t>(n_total, Hkv * P); ++r) keep[idx[r] / P][idx[r] % P] = 1;
}

class Defensive final : public Strategy {
 public:
  explicit Defensive(ParamReader& p) {
    ev_.read(p, {});
    o_.window = p.get_int("window", 32, IntRange{1, kMaxIntParam});
    o_.kernel = p.get_int("kernel", 5, IntRange{1, kMaxIntParam});
    if (o_.kernel % 2 == 0)
      throw UsageError("strategy '" + p.spec().text + "': kernel=" + std::to_string(o_.kernel) + " must be odd");
    o_.mass = p.get_double("mass", 0.9);
    if (!(o_.mass >= 0 && o_.mass <= 1))
      throw UsageError("strategy '" + p.spec().text + "': mass=" + p.resolved().at("mass") + " must be in [0, 1]");
    o_.vnorm = p.get_flag("vnorm", true);
    o_.press_ratio = ev_.press_ratio;
    set_identity(p);
  }
  bool layer_coupled() const override { return true; }
  bool needs_vo_norm() const override { return o_.vnorm; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    const int64_t B = ev_.resolve_budget(ctx.T, ctx.P);
    if (B <= o_.window && ctx.P > B)
      throw UsageError("strategy '" + spec_text() + "': budget " + std::to_string(B) + " must exceed window = " +
                       std::to_string(o_.window) + " (each head keeps the window and chooses the rest)");
    std::vector<std::unique_ptr<StrategyState>> base;
    for (int64_t kv = 0; kv < ctx.n_caches; ++kv) base.push_back(std::make_unique<WindowOnly>(B, o_.window));
    return std::make_unique<DefensiveState>(std::move(base), o_, ctx.kv0);
  }

 private:
  EvictionParams ev_;
  Params o_;
};

}  // namespace

std::unique_ptr<Strategy> make_defensivekv(ParamReader& p) { return std::make_unique<Defensive>(p); }

}  // namespace kvsim
