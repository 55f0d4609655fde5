// rkv (Cai et al., "R-KV: Redundancy-aware KV Cache Compression for Reasoning Models", arXiv
// 2505.24133; reference code Zefan-Cai/R-KV `FlashInfer/rkv/algo.py`, `compressor.py`, `engine.py`,
// `config.py`, a port of the root `rkv/utils.py` and `rkv/compression/r1_kv.py`). Decode-time
// eviction with a trigger: the cache grows to B + buffer slots, then one compaction cuts it to B.
// A compaction over the n held slots, in the cache's order (below), the newest w the window:
//   1. a_i: logits q_j·k_i/√D of the w window tokens' queries (post-RoPE) against every held key,
//      max over the G query heads of the group *before* the softmax; softmax over the n − w past
//      keys, mean over the w queries, max-pooled over `kernel` neighbours (padding never wins);
//   2. r_i: C = cosines of the unit keys k/(‖k‖ + 1e-8), diagonal 0; in each row i the entry of the
//      last j (in cache order) with C[i,j] > threshold is set to 0 (the first entry, j = 0, when no
//      j passes: the reference's max over masked indices); r = softmax over all n of the column
//      means (1/n) Σ_i C[i,j];
//   3. score_i = λ·a_i − (1 − λ)·r_i over the past; keep the top B − w (ties: higher score, then the
//      lower position) and the window.
// Cache order (`order=slot`, the reference): its cache is a tensor that a compaction rewrites as the
// kept past in descending score order, then the window; later tokens are appended. "Last j" and the
// pooling neighbours follow that order. `order=position` uses position order throughout (methods.md's
// "newest j"). kvsim's slots are in arbitrary order, so the reference's order is kept as a rank per
// position. Prefill (`compress_prefill=1`, the reference's default): a prompt of P >= B is compacted
// once with the last w prompt queries. Protocol prefill: that cut, then growth. The window's queries
// (fp16, G·w·D·2 bytes per KV head: the reference's rolling query buffer) are the state `bytes`
// counts under protocol evict; the cache itself holds up to B + buffer slots at attention.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "sim/base/error.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

struct Options {
  int64_t window = 8, kernel = 7, buffer = 128;
  double lambda = 0.1, threshold = 0.5;
  bool compress_prefill = true, slot_order = true;
};

class RkvState final : public StrategyState {
 public:
  RkvState(int64_t B, const Options& o, const HeadGroup& grp) : B_(B), o_(o), grp_(grp) {}

  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override {
    q_ = lv.q, T_ = lv.T, D_ = lv.D;
    rank_.assign(static_cast<size_t>(T_), 0);
    for (int64_t p = 0; p < P; ++p) rank_[p] = p;
    next_rank_ = P;
    // update_kv leaves a cache of fewer than B tokens alone; at exactly B it reorders it.
    if (o_.compress_prefill && caches[0].size() >= B_) compact(caches[0]);
  }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    rank_[t] = next_rank_++;  // token t was appended at the end of the cache
    if (caches[0].size() >= B_ + o_.buffer) compact(caches[0]);
  }
  double state_bytes(int64_t) const override {
    return 2.0 * static_cast<double>(grp_.n * o_.window * D_);  // the window's queries, fp16
  }

 private:
  void compact(SlotCache& c) {
    const int64_t n = c.size(), w = o_.window, np = n - w, D = D_;
    KVSIM_ASSERT(np > 0 && B_ > w && q_ != nullptr);
    // ord: the slots in cache order (rank or position); the window is its last w entries.
    std::vector<int64_t> ord(static_cast<size_t>(n));
    std::iota(ord.begin(), ord.end(), int64_t{0});
    auto key_of = [&](int64_t s) { return o_.slot_order ? rank_[c.pos(s)] : static_cast<int64_t>(c.pos(s)); };
    std::sort(ord.begin(), ord.end(), [&](int64_t a, int64_t b) { return key_of(a) < key_of(b); });

    // 1. Attention of the window's queries over the past, GQA max before the softmax.
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    std::vector<double> a(static_cast<size_t>(np), 0.0), z(static_cast<size_t>(np));
    for (int64_t j = np; j < n; ++j) {
      const int64_t pj = c.pos(ord[j]);
      double mx = -INFINITY;
      for (int64_t i = 0; i < np; ++i) {
        const float* k = c.key(ord[i]);
        double best = -INFINITY;
        for (int64_t g = 0; g < grp_.n; ++g) {
          const float* q = q_ + ((grp_.q0 + g) * T_ + pj) * D;
          double d = 0;
          for (int64_t x = 0; x < D; ++x) d += static_cast<double>(q[x]) * k[x];
          best = std::max(best, d * scale);
        }
        z[i] = best, mx = std::max(mx, best);
      }
      double sum = 0;
      for (int64_t i = 0; i < np; ++i) sum += std::exp(z[i] - mx);
      for (int64_t i = 0; i < np; ++i) a[i] += std::exp(z[i] - mx) / sum / static_cast<double>(w);
    }
    std::vector<double> pooled(static_cast<size_t>(np));
    const int64_t half = o_.kernel / 2;
    for (int64_t i = 0; i < np; ++i) {
      double m = -INFINITY;
      for (int64_t u = std::max<int64_t>(0, i - half); u <= std::min(np - 1, i + half); ++u) m = std::max(m, a[u]);
      pooled[i] = m;
    }

    // 2. Redundancy over all n keys (the window included), in cache order.
    std::vector<double> unit(static_cast<size_t>(n * D));
    for (int64_t i = 0; i < n; ++i) {
      const float* k = c.key(ord[i]);
      double s = 0;
      for (int64_t x = 0; x < D; ++x) s += static_cast<double>(k[x]) * k[x];
      const double inv = 1.0 / (std::sqrt(s) + 1e-8);
      for (int64_t x = 0; x < D; ++x) unit[i * D + x] = k[x] * inv;
    }
    std::vector<double> col(static_cast<size_t>(n), 0.0), row(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      int64_t last = 0;  // no j above the threshold: the reference zeroes entry 0
      for (int64_t j = 0; j < n; ++j) {
        double d = 0;
        if (j != i)
          for (int64_t x = 0; x < D; ++x) d += unit[i * D + x] * unit[j * D + x];
        row[j] = d;
        if (d > o_.threshold) last = j;
      }
      row[last] = 0;
      for (int64_t j = 0; j < n; ++j) col[j] += row[j] / static_cast<double>(n);
    }
    const double cmax = *std::max_element(col.begin(), col.end());
    double csum = 0;
    for (int64_t j = 0; j < n; ++j) csum += std::exp(col[j] - cmax);

    // 3. Joint score over the past; keep the top B − w and the window.
    std::vector<double> score(static_cast<size_t>(np));
    for (int64_t i = 0; i < np; ++i)
      score[i] = o_.lambda * pooled[i] - (1.0 - o_.lambda) * std::exp(col[i] - cmax) / csum;
    std::vector<int64_t> best(static_cast<size_t>(np));
    std::iota(best.begin(), best.end(), int64_t{0});
    const int64_t keep_past = B_ - w;
    std::partial_sort(best.begin(), best.begin() + keep_past, best.end(), [&](int64_t x, int64_t y) {
      return keep_before(score[x], c.pos(ord[x]), score[y], c.pos(ord[y]));
    });
    std::vector<uint8_t> keep(static_cast<size_t>(n), 0);
    int64_t r = 0;
    for (int64_t i = 0; i < keep_past; ++i) keep[ord[best[i]]] = 1, rank_[c.pos(ord[best[i]])] = r++;
    for (int64_t j = np; j < n; ++j) keep[ord[j]] = 1, rank_[c.pos(ord[j])] = r++;
    next_rank_ = r;
    c.remove_unless(keep);
  }

  int64_t B_;
  Options o_;
  HeadGroup grp_;
  const float* q_ = nullptr;  // [H, T, D] post-RoPE, row j read from step j on
  int64_t T_ = 0, D_ = 0;
  std::vector<int64_t> rank_;  // per position: its place in the reference's cache order
  int64_t next_rank_ = 0;
};

class Rkv final : public Strategy {
 public:
  explicit Rkv(ParamReader& p) {
    ep_.read(p, {.sinks = {}, .recent = {}, .gqa = false});
    const std::string& spec = p.spec().text;
    o_.window = p.get_int("window", 8, IntRange{1, kMaxIntParam});
    o_.kernel = p.get_int("kernel", 7, IntRange{1, kMaxIntParam});
    o_.buffer = p.get_int("buffer", 128, IntRange{0, kMaxIntParam});
    o_.lambda = p.get_double("lambda", 0.1);
    o_.threshold = p.get_double("threshold", 0.5);
    o_.compress_prefill = p.get_flag("compress_prefill", true);
    o_.slot_order = p.get_choice("order", {"slot", "position"}) == "slot";
    if (o_.kernel % 2 == 0) throw UsageError("strategy '" + spec + "': kernel must be odd");
    if (!(o_.lambda >= 0 && o_.lambda <= 1)) throw UsageError("strategy '" + spec + "': lambda must be in [0, 1]");
    if (!(o_.threshold >= -1 && o_.threshold <= 1))
      throw UsageError("strategy '" + spec + "': threshold must be in [-1, 1] (a cosine)");
    if (ep_.budget > 0 && ep_.budget <= o_.window)
      throw UsageError("strategy '" + spec + "': budget " + std::to_string(ep_.budget) +
                       " must exceed window = " + std::to_string(o_.window));
    set_identity(p);
  }
  bool needs_queries() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    const int64_t B = ep_.resolve_budget(ctx.T, ctx.P);
    if (B <= o_.window)
      throw UsageError("strategy '" + spec_text() + "': budget " + std::to_string(B) +
                       " must exceed window = " + std::to_string(o_.window));
    return std::make_unique<RkvState>(B, o_, ctx.group());
  }

 private:
  EvictionParams ep_;
  Options o_;
};

}  // namespace

std::unique_ptr<Strategy> make_rkv(ParamReader& p) { return std::make_unique<Rkv>(p); }

}  // namespace kvsim
