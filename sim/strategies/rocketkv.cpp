// rocketkv (Behnam et al., arXiv 2502.14051; rule checked against NVlabs/RocketKV
// pipeline/inf_stream_llm/inf_llm/attention/rocket.py, budgets infllm_utils.py): two stages
// under protocol C, from the token budget B (tokens read per step) and N = T tokens, new = T - P:
//   c = max(1, N/B), r = min(0.2 + 0.06 log2 c, 0.8), capacity C = max(int(N / c^r), min(2 new, N)),
//   prompt budget B_p = C - new, top-k = int(B/2), c2 = max(1, C/B).
// Stage 1, once at prefill and permanent: when P > B_p, SnapKV (window w = min(32, P), votes of
// the window's causal softmax rows summed over the window and the G query heads, max-pool 63)
// keeps the best B_p - w prompt tokens plus the window; decode tokens are never evicted.
// Stage 2, every decode step per KV head, over the held slots in position order (SparQ's estimator
// on chunk extrema): s = sign(sum_g q_g) (-1 where the sum is <= 0); chunks of m = ceil(sqrt c2)
// slots (1 if m > c2) from the oldest, k~ = max over the chunk of s*k; the r_ch = int(D m / c2)
// channels with the largest mean_g |q_g|; s^_g = softmax over the slots of
// (s*q_g)[ch] . k~[ch] / tau_g, tau_g = sqrt(D |q_g[ch]|_1 / |q_g|_1), every slot of a chunk
// scored as its chunk; all G heads read the top-k slots by mean_g s^_g (ties: lower position)
// with exact softmax.
// Bytes: the held slots (codec) plus a chunk's min and max key (2 D fp16) per chunk of m; a step
// reads r_ch fp16 extrema per chunk (max or min by the sign) and the top-k slots.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

// The budgets of one sequence (infllm_utils.py, compress()).
struct RocketBudgets {
  int64_t C = 0, B_p = 0, topk = 0, chunk = 1, r_ch = 0;
  double c2 = 1;
};

RocketBudgets rocket_budgets(int64_t B, int64_t T, int64_t P, int64_t D) {
  const double N = static_cast<double>(T), nw = static_cast<double>(T - P);
  const double c = std::max(1.0, N / static_cast<double>(B));
  const double r = std::min(0.2 + 0.06 * std::log2(c), 0.8);
  RocketBudgets b;
  b.C = std::max(static_cast<int64_t>(N / std::pow(c, r)), static_cast<int64_t>(std::min(2.0 * nw, N)));
  b.B_p = b.C - (T - P);
  b.topk = B / 2;
  b.c2 = std::max(1.0, static_cast<double>(b.C) / static_cast<double>(B));
  b.chunk = static_cast<int64_t>(std::ceil(std::sqrt(b.c2)));
  if (static_cast<double>(b.chunk) > b.c2) b.chunk = 1;
  b.r_ch = static_cast<int64_t>(static_cast<double>(D * b.chunk) / b.c2);
  return b;
}

class RocketkvState final : public StrategyState {
 public:
  RocketkvState(const RocketBudgets& b, int64_t window, int64_t kernel, int64_t D, const HeadGroup& grp)
      : b_(b), window_(window), kernel_(kernel), D_(D), grp_(grp) {}

  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override {
    SlotCache& c = caches[0];
    if (P > b_.B_p) {  // stage 1: the permanent cut
      const int64_t w = std::min(window_, P);
      std::vector<uint8_t> keep_pos(static_cast<size_t>(P), 0);
      for (int32_t p : snapkv_heavy(lv, grp_, P, window_, kernel_, SnapPool::max, Gqa::sum, b_.B_p - w))
        keep_pos[p] = 1;
      std::vector<uint8_t> keep(static_cast<size_t>(c.size()));
      for (int64_t s = 0; s < c.size(); ++s) keep[s] = keep_pos[c.pos(s)] || c.pos(s) >= P - w;
      c.remove_unless(keep);
    }
    order_.resize(static_cast<size_t>(c.size()));
    std::iota(order_.begin(), order_.end(), 0);
    std::sort(order_.begin(), order_.end(), [&](int32_t a, int32_t b) { return c.pos(a) < c.pos(b); });
    n_chunks_ = (c.size() + b_.chunk - 1) / b_.chunk;
  }
  void evict(std::span<SlotCache>, int64_t) override {}

  void select(const SlotCache& cache, int64_t, const float* q, int64_t q_stride, int64_t,
              std::span<Selection> sel) override {
    const int64_t n = cache.size(), G = static_cast<int64_t>(sel.size()), m = b_.chunk;
    for (int64_t s = static_cast<int64_t>(order_.size()); s < n; ++s) {  // decode tokens arrive in order
      KVSIM_ASSERT(order_.empty() || cache.pos(s) > cache.pos(order_.back()));
      order_.push_back(static_cast<int32_t>(s));
    }
    n_chunks_ = (n + m - 1) / m;
    // Sign of the summed query and the channels with the largest mean |q_g| (ties: lower channel).
    std::vector<double> sign(D_), absq(D_, 0.0);
    for (int64_t x = 0; x < D_; ++x) {
      double sum = 0;
      for (int64_t g = 0; g < G; ++g) sum += q[g * q_stride + x], absq[x] += std::fabs(q[g * q_stride + x]);
      sign[x] = sum > 0 ? 1.0 : -1.0;
    }
    std::vector<int32_t> ch(static_cast<size_t>(D_));
    std::iota(ch.begin(), ch.end(), 0);
    std::stable_sort(ch.begin(), ch.end(), [&](int32_t a, int32_t b) { return absq[a] > absq[b]; });
    ch.resize(static_cast<size_t>(b_.r_ch));
    // Chunk extrema of s*k over the selected channels (what a real cache reads: max or min).
    kmax_.assign(static_cast<size_t>(n_chunks_ * b_.r_ch), -INFINITY);
    for (int64_t i = 0; i < n; ++i) {
      const float* k = cache.key(order_[i]);
      double* row = kmax_.data() + (i / m) * b_.r_ch;
      for (int64_t j = 0; j < b_.r_ch; ++j) row[j] = std::max(row[j], sign[ch[j]] * k[ch[j]]);
    }
    // s^_g per chunk (softmax over the slots: a chunk of size n_j weighs n_j times), mean over g.
    score_.assign(static_cast<size_t>(n_chunks_), 0.0);
    std::vector<double> z(static_cast<size_t>(n_chunks_));
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = q + g * q_stride;
      double l1 = 0, l1_ch = 0;
      for (int64_t x = 0; x < D_; ++x) l1 += std::fabs(qg[x]);
      for (int32_t x : ch) l1_ch += std::fabs(qg[x]);
      const double tau = l1 > 0 && l1_ch > 0 ? std::sqrt(static_cast<double>(D_) * l1_ch / l1) : 1.0;
      double zmax = -INFINITY;
      for (int64_t j = 0; j < n_chunks_; ++j) {
        double d = 0;
        for (int64_t c = 0; c < b_.r_ch; ++c) d += sign[ch[c]] * qg[ch[c]] * kmax_[j * b_.r_ch + c];
        z[j] = d / tau, zmax = std::max(zmax, z[j]);
      }
      double den = 0;
      for (int64_t j = 0; j < n_chunks_; ++j)
        den += static_cast<double>(std::min(m, n - j * m)) * std::exp(z[j] - zmax);
      for (int64_t j = 0; j < n_chunks_; ++j) score_[j] += std::exp(z[j] - zmax) / den / static_cast<double>(G);
    }
    // Top-k slots by their chunk's score, ties to the lower position (order_ is by position).
    std::vector<int32_t> idx(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
    const int64_t k = std::min(b_.topk, n);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [&](int32_t a, int32_t b) { return keep_before(score_[a / m], a, score_[b / m], b); });
    idx.resize(static_cast<size_t>(k));
    std::sort(idx.begin(), idx.end());
    for (Selection& s : sel) {
      s.clear();
      for (int32_t i : idx) s.slots.push_back(order_[i]);
    }
  }

  double state_bytes(int64_t) const override { return 2.0 * 2.0 * static_cast<double>(D_ * n_chunks_); }
  double metadata_read_bytes(const SlotCache&, int64_t, std::span<const Selection>) const override {
    return 2.0 * static_cast<double>(n_chunks_ * b_.r_ch);
  }

 private:
  RocketBudgets b_;
  int64_t window_, kernel_, D_;
  HeadGroup grp_;
  std::vector<int32_t> order_;  // slot indices by position
  int64_t n_chunks_ = 0;
  std::vector<double> kmax_, score_;
};

class Rocketkv final : public Strategy {
 public:
  explicit Rocketkv(ParamReader& p) {
    ep_.read(p, {.sinks = {}, .recent = {}, .gqa = false});
    window_ = p.get_int("window", 32);
    kernel_ = p.get_int("kernel", 63);
    const std::string& t = p.spec().text;
    if (window_ <= 0) throw UsageError("strategy '" + t + "': window = " + std::to_string(window_) + " must be > 0");
    if (kernel_ <= 0 || kernel_ % 2 == 0)
      throw UsageError("strategy '" + t + "': kernel = " + std::to_string(kernel_) + " must be odd and > 0");
    if (ep_.budget >= 0 && ep_.budget < 2)
      throw UsageError("strategy '" + t + "': budget = " + std::to_string(ep_.budget) +
                       " must be >= 2 (top-k = budget / 2 slots are read)");
    set_identity(p);
  }
  bool is_selector() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    const int64_t B = ep_.resolve_budget(ctx.T, ctx.P);
    const RocketBudgets b = rocket_budgets(B, ctx.T, ctx.P, ctx.D);
    const std::string where = "strategy '" + ep_.spec + "' (B = " + std::to_string(B) +
                              ", T = " + std::to_string(ctx.T) + ", P = " + std::to_string(ctx.P) + ")";
    if (b.topk < 1) throw UsageError(where + ": top-k = B / 2 = 0 slots; give budget >= 2");
    if (b.r_ch < 1)
      throw UsageError(where + ": r_ch = int(D m / c2) = 0 channels (D = " + std::to_string(ctx.D) + ", chunk m = " +
                       std::to_string(b.chunk) + ", c2 = " + std::to_string(b.c2) + "); give a larger budget");
    const int64_t w = std::min(window_, ctx.P);
    if (ctx.P > b.B_p && b.B_p < w)
      throw UsageError(where + ": prompt budget B_p = C - new = " + std::to_string(b.B_p) +
                       " is below the window w = " + std::to_string(w) + "; give a larger budget");
    return std::make_unique<RocketkvState>(b, window_, kernel_, ctx.D, ctx.group(0));
  }

 private:
  EvictionParams ep_;
  int64_t window_ = 32, kernel_ = 63;
};

}  // namespace

std::unique_ptr<Strategy> make_rocketkv(ParamReader& p) { return std::make_unique<Rocketkv>(p); }

}  // namespace kvsim
