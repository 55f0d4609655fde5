// chunkkv (Liu et al., "ChunkKV: Semantic-Preserving KV Cache Compression for Efficient Long-Context
// LLM Inference", arXiv 2502.00299; reference code kvpress `presses/chunkkv_press.py`). A budget
// allocator (sim/strategies/allocator.h) around a scorer that keeps whole chunks of `chunk`
// consecutive prompt tokens (default 20), the same chunks in every KV head of the layer:
//   1. the base's scores summed over the layer's KV heads, its forced tokens (SnapKV's window,
//      sinks, recent) scored as the layer's highest score (kvpress pads SnapKV's window with
//      scores.max());
//   2. chunks [0, c), [c, 2c), ... and the partial tail chunk; a chunk's score is the mean of its
//      summed scores;
//   3. keep the max(1, int(#chunks · n_kept / P)) best chunks (ties to the earlier chunk), n_kept
//      the base's budget. Forced tokens outside the kept chunks go, as in the reference.
// A prompt shorter than one chunk falls back to the base's own choice (its top n_kept, forced first).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "sim/strategies/allocator.h"

namespace kvsim {

namespace {

class ChunkkvState final : public AllocatorState {
 public:
  ChunkkvState(std::vector<std::unique_ptr<StrategyState>> base, int64_t chunk)
      : AllocatorState(std::move(base)), chunk_(chunk) {}

 protected:
  void choose(std::vector<PromptScores>& ps, int64_t P, std::vector<std::vector<uint8_t>>& keep) override {
    const auto H = static_cast<int64_t>(ps.size());
    const int64_t n_kept = std::min(ps[0].keep, P);
    for (auto& k : keep) std::fill(k.begin(), k.end(), 0);
    const int64_t full = P / chunk_, rem = P % chunk_;
    if (full == 0) {
      for (int64_t h = 0; h < H; ++h) {
        const std::vector<int32_t> order = rank_positions(ps[h]);
        for (int64_t r = 0; r < n_kept; ++r) keep[h][order[r]] = 1;
      }
      return;
    }
    double top = -INFINITY;
    for (const auto& p : ps)
      for (int64_t i = 0; i < P; ++i)
        if (!p.forced[i]) top = std::max(top, p.score[i]);
    std::vector<double> layer(static_cast<size_t>(P), 0.0);
    for (const auto& p : ps)
      for (int64_t i = 0; i < P; ++i) layer[i] += p.forced[i] ? top : p.score[i];
    const int64_t n_chunks = full + (rem > 0);
    std::vector<double> cs(static_cast<size_t>(n_chunks), 0.0);
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t a = c * chunk_, b = std::min(P, a + chunk_);
      for (int64_t i = a; i < b; ++i) cs[c] += layer[i];
      cs[c] /= static_cast<double>(b - a);
    }
    const int64_t n_keep = std::max<int64_t>(1, n_chunks * n_kept / P);
    std::vector<int64_t> order(static_cast<size_t>(n_chunks));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cs[a] > cs[b]; });
    for (int64_t r = 0; r < n_keep; ++r) {
      const int64_t a = order[r] * chunk_, b = std::min(P, a + chunk_);
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = a; i < b; ++i) keep[h][i] = 1;
    }
  }

 private:
  int64_t chunk_;
};

class Chunkkv final : public Allocator {
 public:
  Chunkkv(ParamReader& p, std::unique_ptr<Strategy> base) : Allocator("chunkkv", std::move(base)) {
    chunk_ = p.get_int("chunk", 20, IntRange{1, kMaxIntParam});
    finish_init(p);
  }

 protected:
  std::unique_ptr<AllocatorState> make_allocator(std::vector<std::unique_ptr<StrategyState>> base,
                                                 const InstanceContext&) const override {
    return std::make_unique<ChunkkvState>(std::move(base), chunk_);
  }

 private:
  int64_t chunk_ = 20;
};

}  // namespace

std::unique_ptr<Strategy> make_chunkkv(ParamReader& p, std::unique_ptr<Strategy> base) {
  return std::make_unique<Chunkkv>(p, std::move(base));
}

}  // namespace kvsim
