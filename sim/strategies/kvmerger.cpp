// kvmerger (KVMerger, Wang et al., arXiv 2407.08454). State: H2O-style accumulated attention per
// slot. Rule, whenever the cache exceeds its budget: walk the unprotected slots in position order
// and cluster adjacent slots whose keys have cosine similarity >= threshold (a cluster holds at most
// max_span tokens); merge each cluster of two or more around its pivot, the slot with the highest
// accumulated attention, with Gaussian-kernel weights w_s = exp(-|k_s - k_pivot|^2 / (2 sigma^2))
// (sigma = sigma parameter, or when 0 the RMS key distance to the pivot within the cluster);
// merged key and value are the w-weighted means, the score the sum, and the bias log n under
// proportional attention (prop=1; off by default as in the paper). Then evict the lowest-scored
// slots if still over budget. Defaults: threshold 0.8, max_span 16, sigma 0 (auto), prop 0,
// sinks 4, recent 8, gqa mean.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "sim/base/error.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

struct KvMergerParams {
  double threshold = 0.8, sigma = 0;
  int64_t max_span = 16;
  bool prop = false;
};

double cosine(const float* a, const float* b, int64_t D) {
  double ab = 0, aa = 0, bb = 0;
  for (int64_t d = 0; d < D; ++d) {
    ab += static_cast<double>(a[d]) * b[d];
    aa += static_cast<double>(a[d]) * a[d];
    bb += static_cast<double>(b[d]) * b[d];
  }
  return aa > 0 && bb > 0 ? ab / std::sqrt(aa * bb) : 0.0;
}

class KvMergerState final : public StrategyState {
 public:
  KvMergerState(int64_t B, int64_t sinks, int64_t recent, Gqa gqa, KvMergerParams mp, const InstanceContext& ctx)
      : B_(B), sinks_(sinks), recent_(recent), mp_(mp), score_(ctx.T, ctx.group(), gqa) {}

  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override {
    score_.start(lv, P);
    evict(caches, P - 1);
  }
  void observe(std::span<const SlotCache> caches, std::span<const float* const> attn, int64_t) override {
    score_.add(caches[0], attn[0]);
  }
  void evict(std::span<SlotCache> caches, int64_t t) override {
    SlotCache& c = caches[0];
    if (c.size() > B_) merge_clusters(c, t);
    evict_lowest(c, B_, t, sinks_, recent_, [&](int64_t s) { return score_[c.pos(s)]; });
  }
  double state_bytes(int64_t) const override { return 4.0 * static_cast<double>(B_ + 1); }

 private:
  void merge_clusters(SlotCache& c, int64_t t) {
    const int64_t D = c.D();
    std::vector<int64_t> order;
    for (int64_t s = 0; s < c.size(); ++s) {
      const int32_t first = c.pos(s), last = c.member(s, c.n_members(s) - 1);
      if (first >= sinks_ && last <= t - recent_) order.push_back(s);
    }
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return c.pos(a) < c.pos(b); });
    std::vector<uint8_t> keep(static_cast<size_t>(c.size()), 1);
    bool any = false;
    size_t i = 0;
    while (i < order.size()) {
      size_t j = i + 1;
      int64_t span = c.n_members(order[i]);
      while (j < order.size() && span + c.n_members(order[j]) <= mp_.max_span &&
             cosine(c.key(order[j - 1]), c.key(order[j]), D) >= mp_.threshold) {
        span += c.n_members(order[j]);
        ++j;
      }
      if (j - i >= 2) {
        merge(c,
              std::vector<int64_t>(order.begin() + static_cast<std::ptrdiff_t>(i),
                                   order.begin() + static_cast<std::ptrdiff_t>(j)),
              keep);
        any = true;
      }
      i = j;
    }
    if (any) c.remove_unless(keep);
  }

  // Merges slots `set` (position order) into its first slot; marks the others in keep.
  void merge(SlotCache& c, const std::vector<int64_t>& set, std::vector<uint8_t>& keep) {
    const int64_t D = c.D();
    int64_t pivot = set[0];
    for (int64_t s : set)
      if (keep_before(score_[c.pos(s)], c.pos(s), score_[c.pos(pivot)], c.pos(pivot))) pivot = s;
    std::vector<double> dist2(set.size());
    double mean_d2 = 0;
    for (size_t x = 0; x < set.size(); ++x) {
      double d2 = 0;
      for (int64_t d = 0; d < D; ++d) {
        const double e = static_cast<double>(c.key(set[x])[d]) - c.key(pivot)[d];
        d2 += e * e;
      }
      dist2[x] = d2;
      mean_d2 += d2;
    }
    mean_d2 /= static_cast<double>(set.size() - 1);  // RMS over the non-pivot slots
    const double two_sigma2 = mp_.sigma > 0 ? 2 * mp_.sigma * mp_.sigma : 2 * mean_d2;
    std::vector<double> k(static_cast<size_t>(D), 0.0), v(static_cast<size_t>(D), 0.0);
    double W = 0, score = 0;
    std::vector<int32_t> members;
    for (size_t x = 0; x < set.size(); ++x) {
      const int64_t s = set[x];
      const double w = two_sigma2 > 0 ? std::exp(-dist2[x] / two_sigma2) : 1.0;
      for (int64_t d = 0; d < D; ++d) {
        k[static_cast<size_t>(d)] += w * c.key(s)[d];
        v[static_cast<size_t>(d)] += w * c.value(s)[d];
      }
      W += w;
      score += score_[c.pos(s)];
      for (int64_t j = 0; j < c.n_members(s); ++j) members.push_back(c.member(s, j));
      if (x > 0) keep[static_cast<size_t>(s)] = 0;
    }
    const int64_t head = set[0];
    for (int64_t d = 0; d < D; ++d) {
      c.key(head)[d] = static_cast<float>(k[static_cast<size_t>(d)] / W);
      c.value(head)[d] = static_cast<float>(v[static_cast<size_t>(d)] / W);
    }
    std::sort(members.begin(), members.end());
    c.set_members(head, members);
    c.set_exact(head, false);
    c.set_bias(head, mp_.prop ? static_cast<float>(std::log(static_cast<double>(members.size()))) : 0.0f);
    score_[members[0]] = score;
  }

  int64_t B_, sinks_, recent_;
  KvMergerParams mp_;
  AccumulatedAttention score_;
};

class KvMerger final : public Strategy {
 public:
  explicit KvMerger(ParamReader& p) {
    ep_.read(p, {.sinks = 4, .recent = 8, .gqa = true});
    mp_.threshold = p.get_double("threshold", 0.8, "key cosine similarity at or above which adjacent slots cluster");
    if (!(mp_.threshold >= -1 && mp_.threshold <= 1))
      throw UsageError("kvmerger: threshold=" + std::to_string(mp_.threshold) + " must be in [-1, 1]");
    mp_.max_span = p.get_int("max_span", 16, IntRange{2, kMaxIntParam}, "tokens per merged slot at most");
    mp_.sigma = p.get_double("sigma", 0.0, "Gaussian kernel width on key distance (0: RMS distance in the cluster)");
    if (mp_.sigma < 0) throw UsageError("kvmerger: sigma=" + std::to_string(mp_.sigma) + " must be >= 0");
    mp_.prop = p.get_flag("prop", false, "proportional attention: bias log(n) on merged slots");
    set_identity(p);
  }
  bool needs_prompt_colsums() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    return std::make_unique<KvMergerState>(ep_.resolve_budget(ctx.T, ctx.P), ep_.sinks, ep_.recent, ep_.gqa, mp_, ctx);
  }

 private:
  EvictionParams ep_;
  KvMergerParams mp_;
};

}  // namespace

std::unique_ptr<Strategy> make_kvmerger(ParamReader& p) { return std::make_unique<KvMerger>(p); }

}  // namespace kvsim
