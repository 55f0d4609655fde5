// quest (protocol C, sim/strategies/STRATEGIES.md): Quest, "Quest: Query-Aware Sparsity for
// Efficient Long-Context LLM Inference" (Tang et al., arXiv 2406.10774), reference code
// mit-han-lab/Quest (evaluation/quest_attention.py; kernel path quest/utils/controller.py).
// The cache is cut into pages of `page` consecutive positions from position 0 (the last page
// partial); per KV head and page it keeps the channel-wise minimum m_p and maximum M_p of the keys.
// At each decode step every query head bounds q·k over a page by U_p = Σ_c max(q_c m_pc, q_c M_pc)
// and reads the n = min(max(3, ⌊B/page⌋), #pages) pages of highest U_p; with `last=1` (the kernel
// path) the page holding the newest token is always one of them and the others are the top n − 1.
// Layers in `dense_layers` (default 0,1) read every slot, as the reference does.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "sim/base/error.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {
class QuestState final : public StrategyState {
 public:
  QuestState(int64_t B, int64_t page, bool last, bool dense, int64_t D)
      : B_(B), page_(page), last_(last), dense_(dense), D_(D) {}
  void prefill(std::span<SlotCache> caches, const LayerView&, int64_t) override {
    pages_ = dense_ ? 0 : n_pages(caches[0]);
  }
  void evict(std::span<SlotCache>, int64_t) override {}
  // fp16 min and max per channel, per page held (dense layers keep none: nothing reads it).
  double state_bytes(int64_t) const override { return 2.0 * 2.0 * static_cast<double>(D_ * pages_); }
  // Every page's metadata is read once per KV head and step; the engine adds the selected slots.
  double metadata_read_bytes(const SlotCache&, int64_t, std::span<const Selection>) const override {
    return state_bytes(0);
  }

  void select(const SlotCache& cache, int64_t, const float* q, int64_t q_stride, int64_t,
              std::span<Selection> sel) override {
    const int64_t n = cache.size();
    if (dense_) {
      for (Selection& s : sel) {
        s.clear();
        s.slots.resize(static_cast<size_t>(n));
        std::iota(s.slots.begin(), s.slots.end(), 0);
      }
      return;
    }
    pages_ = n_pages(cache);
    build_metadata(cache);
    const int64_t n_read = std::min(std::max<int64_t>(3, B_ / page_), pages_);
    const int64_t newest = pages_ - 1;  // under protocol sparse every position 0..t is held
    std::vector<double> u(static_cast<size_t>(pages_));
    std::vector<int32_t> order(static_cast<size_t>(pages_));
    std::vector<uint8_t> chosen(static_cast<size_t>(pages_));
    for (size_t g = 0; g < sel.size(); ++g) {
      const float* qg = q + static_cast<int64_t>(g) * q_stride;
      for (int64_t p = 0; p < pages_; ++p) {
        double acc = 0;
        for (int64_t x = 0; x < D_; ++x) {
          const double a = static_cast<double>(qg[x]) * lo_[p * D_ + x],
                       b = static_cast<double>(qg[x]) * hi_[p * D_ + x];
          acc += std::max(a, b);
        }
        u[p] = acc;
      }
      std::fill(chosen.begin(), chosen.end(), 0);
      std::iota(order.begin(), order.end(), 0);
      int64_t from = 0, want = n_read;
      if (last_) {  // the newest page first, the rest ranked among the others
        chosen[newest] = 1, --want;
        std::swap(order[0], order[newest]);
        from = 1;
      }
      auto better = [&](int32_t a, int32_t b) { return keep_before(u[a], a, u[b], b); };
      std::partial_sort(order.begin() + from, order.begin() + from + want, order.end(), better);
      for (int64_t i = from; i < from + want; ++i) chosen[order[i]] = 1;
      sel[g].clear();
      for (int64_t s = 0; s < n; ++s)  // slot order: with every page read, attention is full's exactly
        if (chosen[cache.pos(s) / page_]) sel[g].slots.push_back(static_cast<int32_t>(s));
    }
  }

 private:
  int64_t n_pages(const SlotCache& cache) const {
    int32_t last = 0;
    for (int64_t s = 0; s < cache.size(); ++s) last = std::max(last, cache.pos(s));
    return cache.size() ? last / page_ + 1 : 0;
  }
  // Page minima and maxima over the keys as held (dequantized under a codec), rebuilt per step so
  // that they follow a codec that replaces keys in place.
  void build_metadata(const SlotCache& cache) {
    lo_.assign(static_cast<size_t>(pages_ * D_), INFINITY);
    hi_.assign(static_cast<size_t>(pages_ * D_), -INFINITY);
    for (int64_t s = 0; s < cache.size(); ++s) {
      const int64_t p = cache.pos(s) / page_;
      const float* k = cache.key(s);
      for (int64_t x = 0; x < D_; ++x) {
        lo_[p * D_ + x] = std::min(lo_[p * D_ + x], k[x]);
        hi_[p * D_ + x] = std::max(hi_[p * D_ + x], k[x]);
      }
    }
  }

  int64_t B_, page_;
  bool last_, dense_;
  int64_t D_;
  int64_t pages_ = 0;
  std::vector<float> lo_, hi_;  // [pages, D]
};

class Quest final : public Strategy {
 public:
  explicit Quest(ParamReader& p) {
    ep_.read(p, {.sinks = {}, .recent = {}, .gqa = false});
    page_ = p.get_int("page", 16);
    if (page_ < 1)
      throw UsageError("strategy '" + p.spec().text + "': page=" + std::to_string(page_) + " must be >= 1");
    last_ = p.get_flag("last", true);
    dense_ = p.get_int_list("dense_layers", {0, 1});
    for (int64_t l : dense_)
      if (l < 0)
        throw UsageError("strategy '" + p.spec().text + "': dense_layers holds " + std::to_string(l) +
                         " (layers are 0..L-1)");
    set_identity(p);
  }
  bool is_selector() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    for (int64_t l : dense_)
      if (l >= ctx.n_layers)
        throw UsageError("strategy '" + spec_text_ + "': dense_layers holds layer " + std::to_string(l) +
                         " but the trace has L = " + std::to_string(ctx.n_layers) + " layers (0.." +
                         std::to_string(ctx.n_layers - 1) + ")");
    const bool dense = std::find(dense_.begin(), dense_.end(), ctx.layer) != dense_.end();
    return std::make_unique<QuestState>(ep_.resolve_budget(ctx.T, ctx.P), page_, last_ == 1, dense, ctx.D);
  }

 private:
  EvictionParams ep_;
  int64_t page_ = 16, last_ = 1;
  std::vector<int64_t> dense_;
};
}  // namespace

std::unique_ptr<Strategy> make_quest(ParamReader& p) { return std::make_unique<Quest>(p); }

}  // namespace kvsim
