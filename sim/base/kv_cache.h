// The live KV cache of the native model runner, one instance per (layer, KV head), seen by
// attention as a list of slots (design.md §3): a key, a value, an additive logit bias and the
// position it stands for. FullKvCache keeps every token exactly. A cache strategy (eviction,
// merging, quantization) can own the runner's cache by implementing this interface and being
// handed to the runner through a KvCacheFactory (`kvsim ppl`).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace kvsim {

// What attention reads: n slots, each a key and value of D floats. A query at position p sees the
// slots with pos[s] <= p (causal mask); a merged slot carries the position of its newest member.
struct KvView {
  const float* k = nullptr;      // [n, D]
  const float* v = nullptr;      // [n, D]
  const float* bias = nullptr;   // [n] additive logit bias, or nullptr for all zeros
  const int64_t* pos = nullptr;  // [n] slot positions, ascending is not required
  int64_t n = 0;
};

class KvCache {
 public:
  virtual ~KvCache() = default;
  virtual void clear() = 0;
  // Appends n_tok tokens at positions pos0 .. pos0 + n_tok - 1.
  virtual void append(const float* k,  // [n_tok, D]
                      const float* v,  // [n_tok, D]
                      int64_t n_tok, int64_t pos0) = 0;
  // The slots attention sees now; valid until the next append/clear/end_step.
  virtual KvView view() const = 0;
  // Called after append() with the queries of this KV head's G query heads for the T tokens of
  // the forward call. A cache that computes their attention itself (a strategy cache: it needs the
  // weights, and slot views that KvView cannot express) writes o and returns true; by default the
  // runner attends over view(). All KV heads of a layer must answer alike within one call.
  virtual bool attend(const float* q,  // [T, G, D], token t's G rows at q + t * stride
                      int64_t stride, int64_t T, int64_t G, int64_t pos0,
                      float* o) {  // [T, G, D], token t's G rows at o + t * stride
    (void)q, (void)stride, (void)T, (void)G, (void)pos0, (void)o;
    return false;
  }
  // Called after every forward call once attention over view() is done: the point where a
  // strategy evicts, merges or requantizes back to its budget. The full cache does nothing.
  virtual void end_step() {}
};

// Exact cache: every token, in order, no bias.
class FullKvCache final : public KvCache {
 public:
  FullKvCache(int64_t D, int64_t capacity) : D_(D) {
    k_.reserve(static_cast<size_t>(capacity * D));
    v_.reserve(static_cast<size_t>(capacity * D));
    pos_.reserve(static_cast<size_t>(capacity));
  }
  void clear() override {
    k_.clear();
    v_.clear();
    pos_.clear();
  }
  void append(const float* k, const float* v, int64_t n_tok, int64_t pos0) override {
    k_.insert(k_.end(), k, k + n_tok * D_);
    v_.insert(v_.end(), v, v + n_tok * D_);
    for (int64_t t = 0; t < n_tok; ++t) pos_.push_back(pos0 + t);
  }
  KvView view() const override {
    return KvView{k_.data(), v_.data(), nullptr, pos_.data(), static_cast<int64_t>(pos_.size())};
  }

 private:
  int64_t D_;
  std::vector<float> k_, v_;
  std::vector<int64_t> pos_;
};

// Makes the cache of one (layer, KV head); capacity is the context length (a hint).
using KvCacheFactory =
    std::function<std::unique_ptr<KvCache>(int64_t layer, int64_t kv_head, int64_t D, int64_t capacity)>;

inline KvCacheFactory full_cache_factory() {
  return [](int64_t, int64_t, int64_t D, int64_t capacity) { return std::make_unique<FullKvCache>(D, capacity); };
}

}  // namespace kvsim
