// pqcache (protocol C, sim/strategies/STRATEGIES.md): PQCache, product-quantized keys for top-k
// retrieval (Zhang et al., "PQCache: Product Quantization-based KVCache for Long Context LLM
// Inference", SIGMOD 2025, arXiv 2407.12820; reference HugoZHL/PQCache vq_method/retrieval_based/
// pq_search.py, configuration of the sparse-attention-hub port).
// After prefill, per KV head: the first `sinks` tokens stay exact and are never coded; the keys after
// them are split into m sub-vectors of D/m channels and clustered per sub-space by Euclidean k-means
// (2^bits centroids, `iters` Lloyd iterations from evenly spaced tokens), each token keeping m codes.
// At a decode step each query head scores the candidates by score_i = Σ_j q_j·centroid_{j, code_ij}
// and attends exactly over the sinks, the local window and its `top` best candidates.
//   new=code (default, both references): the window is the `local` tokens before t plus t; a
//            decode token gets the codes of its nearest centroids and competes once it leaves it.
//   new=exact: the last `local` prompt tokens and every decode token are exact; the candidates are the
//            middle prompt tokens only.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "sim/base/error.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

struct PqParams {
  int64_t sinks = 128, local = 128, m = 2, bits = 6, iters = 10;
  double top = 0.1;
  int64_t budget = -1;  // tokens read per step and query head, instead of `top`
  bool code_new = true;
};

class PqCacheState final : public StrategyState {
 public:
  PqCacheState(const PqParams& pp, const InstanceContext& ctx) : pp_(pp), ctx_(ctx), C_(int64_t{1} << pp.bits) {
    s0_ = std::min(pp.sinks, ctx.P);
    mid_end_ = std::max(s0_, ctx.P - pp.local);
    const int64_t n_fit = pp.code_new ? ctx.P - s0_ : mid_end_ - s0_;  // tokens k-means clusters
    const char* why = nullptr;
    if (mid_end_ == s0_)
      why = "sinks + local >= P: the middle is empty";
    else if (n_fit < C_)
      why = "fewer tokens to cluster than 2^bits centroids";
    if (why) {
      full_ = true;
      static std::atomic<bool> said{false};
      if (!said.exchange(true))
        std::fprintf(stderr,
                     "pqcache: %s (P = %lld, sinks = %lld, local = %lld, %lld tokens to cluster, 2^bits = %lld): "
                     "every token is read (full attention)\n",
                     why, static_cast<long long>(ctx.P), static_cast<long long>(pp.sinks),
                     static_cast<long long>(pp.local), static_cast<long long>(n_fit), static_cast<long long>(C_));
    }
  }

  void prefill(std::span<SlotCache> caches, const LayerView&, int64_t) override {
    if (full_) return;
    KVSIM_ASSERT(caches.size() == 1);
    const SlotCache& c = caches[0];
    const int64_t D = ctx_.D, m = pp_.m, d = D / m;
    const int64_t n = pp_.code_new ? ctx_.P - s0_ : mid_end_ - s0_;
    cent_.assign(static_cast<size_t>(m * C_ * d), 0.0);
    codes_.assign(static_cast<size_t>(n * m), 0);
    std::vector<double> x(static_cast<size_t>(n * d));
    std::vector<int64_t> count(static_cast<size_t>(C_));
    for (int64_t j = 0; j < m; ++j) {
      for (int64_t i = 0; i < n; ++i)
        for (int64_t y = 0; y < d; ++y) x[i * d + y] = c.key(s0_ + i)[j * d + y];
      double* cj = cent_.data() + j * C_ * d;
      for (int64_t k = 0; k < C_; ++k)  // init: tokens k·n/C_ (evenly spaced, in position order)
        std::copy_n(x.data() + (k * n / C_) * d, d, cj + k * d);
      for (int64_t it = 0; it < pp_.iters; ++it) {
        for (int64_t i = 0; i < n; ++i) codes_[i * m + j] = nearest(cj, x.data() + i * d, d);
        std::fill(count.begin(), count.end(), 0);
        std::vector<double> sum(static_cast<size_t>(C_ * d), 0.0);
        for (int64_t i = 0; i < n; ++i) {
          const int64_t k = codes_[i * m + j];
          ++count[k];
          for (int64_t y = 0; y < d; ++y) sum[k * d + y] += x[i * d + y];
        }
        for (int64_t k = 0; k < C_; ++k)  // an empty cluster keeps its centroid
          if (count[k] > 0)
            for (int64_t y = 0; y < d; ++y) cj[k * d + y] = sum[k * d + y] / static_cast<double>(count[k]);
      }
      for (int64_t i = 0; i < n; ++i) codes_[i * m + j] = nearest(cj, x.data() + i * d, d);
    }
  }
  void evict(std::span<SlotCache>, int64_t) override {}

  void select(const SlotCache& cache, int64_t, const float* q, int64_t q_stride, int64_t t,
              std::span<Selection> sel) override {
    const int64_t n = cache.size(), D = ctx_.D, m = pp_.m, d = D / m;
    KVSIM_ASSERT(n == t + 1);  // protocol C holds every token, slot s at position s
    if (full_) {
      for (Selection& out : sel) {
        out.clear();
        out.slots.resize(static_cast<size_t>(n));
        std::iota(out.slots.begin(), out.slots.end(), 0);
      }
      return;
    }
    // Decode tokens up to t get the codes of their nearest centroids (steps the replay skips too).
    for (int64_t s = s0_ + static_cast<int64_t>(codes_.size()) / m; pp_.code_new && s <= t; ++s) {
      std::vector<double> x(static_cast<size_t>(d));
      for (int64_t j = 0; j < m; ++j) {
        for (int64_t y = 0; y < d; ++y) x[y] = cache.key(s)[j * d + y];
        codes_.push_back(nearest(cent_.data() + j * C_ * d, x.data(), d));
      }
    }
    // Candidates [s0, c1); exact: [0, s0) and [c1, t].
    c1_ = pp_.code_new ? std::max(s0_, t - pp_.local) : mid_end_;
    const int64_t n_cand = c1_ - s0_, n_exact = s0_ + (t + 1 - c1_);
    int64_t n_top = pp_.budget >= 0 ? std::max<int64_t>(0, pp_.budget - n_exact)
                                    : static_cast<int64_t>(pp_.top * static_cast<double>(n_cand));
    n_top = std::min(n_top, n_cand);
    std::vector<double> table(static_cast<size_t>(m * C_)), score(static_cast<size_t>(n_cand));
    std::vector<int32_t> cand(static_cast<size_t>(n_cand));
    for (size_t g = 0; g < sel.size(); ++g) {
      const float* qg = q + static_cast<int64_t>(g) * q_stride;
      for (int64_t j = 0; j < m; ++j)
        for (int64_t k = 0; k < C_; ++k) {
          double s = 0;
          for (int64_t y = 0; y < d; ++y) s += static_cast<double>(qg[j * d + y]) * cent_[(j * C_ + k) * d + y];
          table[j * C_ + k] = s;
        }
      for (int64_t i = 0; i < n_cand; ++i) {
        double s = 0;
        for (int64_t j = 0; j < m; ++j) s += table[j * C_ + codes_[i * m + j]];
        score[i] = s;
        cand[i] = static_cast<int32_t>(s0_ + i);
      }
      auto better = [&](int32_t a, int32_t b) { return keep_before(score[a - s0_], a, score[b - s0_], b); };
      std::partial_sort(cand.begin(), cand.begin() + n_top, cand.end(), better);
      Selection& out = sel[g];
      out.clear();
      for (int32_t s = 0; s < s0_; ++s) out.slots.push_back(s);
      out.slots.insert(out.slots.end(), cand.begin(), cand.begin() + n_top);
      for (int32_t s = static_cast<int32_t>(c1_); s < n; ++s) out.slots.push_back(s);
      std::sort(out.slots.begin(), out.slots.end());  // slot order: with every slot read, exactly full
    }
  }

  // Held: m codes of `bits` bits per coded token (packed) and 2^bits·D fp16 centroid values.
  double state_bytes(int64_t) const override {
    if (full_) return 0;
    return static_cast<double>(codes_.size()) * static_cast<double>(pp_.bits) / 8.0 + centroid_bytes();
  }
  // Read per step: the candidates' codes and every centroid (once per KV head).
  double metadata_read_bytes(const SlotCache&, int64_t, std::span<const Selection>) const override {
    if (full_) return 0;
    return static_cast<double>((c1_ - s0_) * pp_.m * pp_.bits) / 8.0 + centroid_bytes();
  }

 private:
  double centroid_bytes() const { return 2.0 * static_cast<double>(C_ * ctx_.D); }
  // The nearest of the C_ centroids c [C_, d] to x [d] (squared Euclidean; ties to the lower index).
  uint16_t nearest(const double* c, const double* x, int64_t d) const {
    int64_t best = 0;
    double bd = 0;
    for (int64_t k = 0; k < C_; ++k) {
      double e = 0;
      for (int64_t y = 0; y < d; ++y) e += (x[y] - c[k * d + y]) * (x[y] - c[k * d + y]);
      if (k == 0 || e < bd) best = k, bd = e;
    }
    return static_cast<uint16_t>(best);
  }

  PqParams pp_;
  InstanceContext ctx_;
  int64_t C_;
  int64_t s0_ = 0, mid_end_ = 0, c1_ = 0;
  bool full_ = false;
  std::vector<double> cent_;     // [m, C_, D/m]
  std::vector<uint16_t> codes_;  // [coded tokens from position s0, m]
};

class PqCache final : public Strategy {
 public:
  explicit PqCache(ParamReader& p) {
    const std::string& spec = p.spec().text;
    pp_.sinks = p.get_int("sinks", 128);
    pp_.local = p.get_int("local", 128);
    pp_.m = p.get_int("m", 2);
    pp_.bits = p.get_int("bits", 6);
    pp_.iters = p.get_int("iters", 10, IntRange{1, 1000});  // Lloyd iterations per prefill
    pp_.code_new = p.get_choice("new", {"code", "exact"}) == "code";
    if (p.has("budget") && p.has("top"))
      throw UsageError("strategy '" + spec + "': give top=FRACTION or budget=TOKENS, not both");
    if (p.has("budget")) {
      pp_.budget = p.get_int("budget", 0);
      if (pp_.budget <= 0)
        throw UsageError("strategy '" + spec + "': budget=" + std::to_string(pp_.budget) + " must be > 0");
    } else {
      pp_.top = p.get_double("top", 0.1);
      if (!(pp_.top > 0 && pp_.top <= 1))
        throw UsageError("strategy '" + spec + "': top=" + p.resolved().at("top") + " must be in (0, 1]");
    }
    if (pp_.sinks < 0 || pp_.local < 0)
      throw UsageError("strategy '" + spec + "': sinks=" + std::to_string(pp_.sinks) +
                       " and local=" + std::to_string(pp_.local) + " must be >= 0");
    if (pp_.bits < 1 || pp_.bits > 16)
      throw UsageError("strategy '" + spec + "': bits=" + std::to_string(pp_.bits) + " must be in [1, 16]");
    if (pp_.m < 1) throw UsageError("strategy '" + spec + "': m=" + std::to_string(pp_.m) + " must be >= 1");
    set_identity(p);
  }
  bool is_selector() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    if (ctx.D % pp_.m != 0)
      throw UsageError("strategy '" + spec_text_ + "': m=" + std::to_string(pp_.m) +
                       " sub-spaces do not divide the head dim D = " + std::to_string(ctx.D));
    return std::make_unique<PqCacheState>(pp_, ctx);
  }

 private:
  PqParams pp_;
};

}  // namespace

std::unique_ptr<Strategy> make_pqcache(ParamReader& p) { return std::make_unique<PqCache>(p); }

}  // namespace kvsim
