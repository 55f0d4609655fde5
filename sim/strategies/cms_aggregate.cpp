// cms_aggregate: an exact cache of the recent and heavy tokens (h2o's rule: accumulated attention,
// `sinks`, `recent`, budget B slots), plus a d x w Count-Min-Sketch-shaped store of everything it
// evicts: an evicted token is folded into one bucket per row j, h_j(position) (the sketch's
// pairwise-independent hashes), each bucket a merged slot (sum of keys, sum of values, count; key
// and value the means, bias log count under proportional attention) that attention still sees.
// Row j is attention view j (sim/strategies/slot.h): view j attends over the exact slots plus row j's
// buckets, the d outputs are averaged, and a bucket's members count with share 1/d in the mass.
// bytes: the exact slots and the bucket slots (fp16 key + value each), the d x w counts and hash
// parameters, and the scores. Defaults: width 16, depth 2, sinks 4, recent B/2, prop 1, gqa mean.
#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "sim/base/error.h"
#include "sim/strategies/cms.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

struct AggParams {
  int64_t width = 16, depth = 2;
  uint64_t seed = 0;
  bool prop = true;
};

class CmsAggregateState final : public StrategyState {
 public:
  CmsAggregateState(int64_t B, int64_t sinks, int64_t recent, Gqa gqa, AggParams ap, const InstanceContext& ctx)
      : B_(B), sinks_(sinks), recent_(recent), ap_(ap), D_(ctx.D),
        hash_(ap.width, ap.depth, ap.seed ^ (static_cast<uint64_t>(ctx.layer) << 32) ^ static_cast<uint64_t>(ctx.kv0)),
        score_(ctx.T, ctx.group(), gqa), sumk_(static_cast<size_t>(ap.width * ap.depth * ctx.D), 0.0),
        sumv_(sumk_.size(), 0.0), members_(static_cast<size_t>(ap.width * ap.depth)) {}

  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override {
    caches[0].set_n_views(ap_.depth);
    score_.start(lv, P);
    evict(caches, P - 1);
  }

  void observe(std::span<const SlotCache> caches, std::span<const float* const> attn, int64_t) override {
    score_.add(caches[0], attn[0], /*view0_only=*/true);
  }

  void evict(std::span<SlotCache> caches, int64_t t) override {
    SlotCache& c = caches[0];
    int64_t n_exact = 0;
    std::unordered_map<int64_t, int64_t> bucket_slot;  // bucket index -> slot
    for (int64_t s = 0; s < c.size(); ++s) {
      if (c.view(s) == 0) {
        ++n_exact;
      } else {
        const int64_t row = c.view(s) - 1;
        bucket_slot[row * ap_.width + hash_.bucket(row, c.pos(s))] = s;
      }
    }
    if (n_exact <= B_) return;
    // Victims: the lowest-scored unprotected exact slots (ties: the higher position goes).
    std::vector<int64_t> cand;
    for (int64_t s = 0; s < c.size(); ++s)
      if (c.view(s) == 0 && !is_protected(c.pos(s), t, sinks_, recent_)) cand.push_back(s);
    const int64_t n_evict = std::min<int64_t>(n_exact - B_, static_cast<int64_t>(cand.size()));
    auto worse = [&](int64_t a, int64_t b) {
      return keep_before(score_[c.pos(b)], c.pos(b), score_[c.pos(a)], c.pos(a));
    };
    std::nth_element(cand.begin(), cand.begin() + (n_evict - 1), cand.end(), worse);
    cand.resize(static_cast<size_t>(n_evict));

    std::vector<int64_t> touched;
    for (int64_t s : cand) {
      const int32_t p = c.pos(s);
      for (int64_t row = 0; row < ap_.depth; ++row) {
        const int64_t b = row * ap_.width + hash_.bucket(row, p);
        for (int64_t x = 0; x < D_; ++x) {
          sumk_[static_cast<size_t>(b * D_ + x)] += c.key(s)[x];
          sumv_[static_cast<size_t>(b * D_ + x)] += c.value(s)[x];
        }
        auto& m = members_[static_cast<size_t>(b)];
        m.insert(std::upper_bound(m.begin(), m.end(), p), p);
        touched.push_back(b);
      }
    }
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    std::vector<float> k(static_cast<size_t>(D_)), v(static_cast<size_t>(D_));
    for (int64_t b : touched) {
      const auto& m = members_[static_cast<size_t>(b)];
      const double n = static_cast<double>(m.size());
      for (int64_t x = 0; x < D_; ++x) {
        k[static_cast<size_t>(x)] = static_cast<float>(sumk_[static_cast<size_t>(b * D_ + x)] / n);
        v[static_cast<size_t>(x)] = static_cast<float>(sumv_[static_cast<size_t>(b * D_ + x)] / n);
      }
      const float bias = ap_.prop ? static_cast<float>(std::log(n)) : 0.0f;
      const int32_t view = static_cast<int32_t>(b / ap_.width) + 1;
      auto it = bucket_slot.find(b);
      int64_t s;
      if (it == bucket_slot.end()) {
        c.append(k.data(), v.data(), bias, m, false);
        s = c.size() - 1;
      } else {
        s = it->second;
        std::copy(k.begin(), k.end(), c.key(s));
        std::copy(v.begin(), v.end(), c.value(s));
        c.set_bias(s, bias);
        c.set_members(s, m);
      }
      c.set_exact(s, false);
      c.set_view(s, view, 1.0f / static_cast<float>(ap_.depth));
    }
    std::vector<uint8_t> keep(static_cast<size_t>(c.size()), 1);
    for (int64_t s : cand) keep[static_cast<size_t>(s)] = 0;
    c.remove_unless(keep);
  }

  // Scores of the exact part, and the sketch's counts and hash parameters.
  double state_bytes(int64_t) const override {
    return 4.0 * static_cast<double>(B_ + 1) + 4.0 * static_cast<double>(ap_.width * ap_.depth) +
           16.0 * static_cast<double>(ap_.depth);
  }

 private:
  int64_t B_, sinks_, recent_;
  AggParams ap_;
  int64_t D_;
  CountMinSketch hash_;  // used for its hashes only
  AccumulatedAttention score_;
  std::vector<double> sumk_, sumv_;            // [d * w, D]
  std::vector<std::vector<int32_t>> members_;  // [d * w], sorted
};

class CmsAggregate final : public Strategy {
 public:
  explicit CmsAggregate(ParamReader& p) {
    ep_.read(p, {.sinks = 4, .recent = -1, .gqa = true});
    ap_.width = p.get_int("width", 16, "buckets per sketch row (w)");
    ap_.depth = p.get_int("depth", 2, "sketch rows (d): attention views averaged");
    ap_.seed = p.get_seed("seed", "hash seed");
    ap_.prop = p.get_flag("prop", true, "proportional attention: bias log(count) on buckets");
    CountMinSketch check(ap_.width, ap_.depth, 0);  // validates width and depth (one-line UsageError)
    set_identity(p);
  }
  bool needs_prompt_colsums() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    const int64_t B = ep_.resolve_budget(ctx.T, ctx.P);
    return std::make_unique<CmsAggregateState>(B, ep_.sinks, ep_.resolve_recent(B), ep_.gqa, ap_, ctx);
  }

 private:
  EvictionParams ep_;
  AggParams ap_;
};

}  // namespace

std::unique_ptr<Strategy> make_cms_aggregate(ParamReader& p) { return std::make_unique<CmsAggregate>(p); }

}  // namespace kvsim
