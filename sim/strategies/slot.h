// The cache of one (layer, KV head) as a list of slots (design.md §3). A slot holds one key and one
// value exactly as attention sees them (exact, dequantized or merged), an additive logit bias, and
// the original positions it stands for. Strategies keep their own per-position state (scores by
// position), so the slot order is arbitrary: removal moves the last slot into the hole (O(D)).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "sim/base/error.h"
#include "sim/kernels/attend.h"

namespace kvsim {

class SlotCache {
 public:
  SlotCache() = default;
  SlotCache(int64_t D, int64_t capacity_hint) : D_(D) { reserve(capacity_hint); }

  int64_t D() const { return D_; }
  int64_t size() const { return static_cast<int64_t>(pos_.size()); }
  void reserve(int64_t n);
  void clear();

  // Appends an exact token: key k_t, value v_t [D] of position t.
  void append_exact(int32_t t, const float* k, const float* v);
  // Appends a general slot: key and value as attention sees them, bias, and its members (sorted;
  // members[0] is the slot's representative position). `exact` says k̂ = k and v̂ = v of a single member.
  void append(const float* k_hat, const float* v_hat, float bias, const std::vector<int32_t>& members, bool exact);
  // Removes slot s; the last slot takes its index.
  void remove(int64_t s);
  // Removes every slot whose keep[s] is 0 (keep has size() entries), preserving nothing about order.
  void remove_unless(const std::vector<uint8_t>& keep);

  const float* key(int64_t s) const { return key_.data() + s * D_; }
  const float* value(int64_t s) const { return value_.data() + s * D_; }
  float* key(int64_t s) { return key_.data() + s * D_; }
  float* value(int64_t s) { return value_.data() + s * D_; }
  const float* keys() const { return key_.data(); }      // [n, D]
  const float* values() const { return value_.data(); }  // [n, D]
  const float* biases() const { return bias_.data(); }   // [n]
  float bias(int64_t s) const { return bias_[s]; }
  void set_bias(int64_t s, float b) { bias_[s] = b; }
  // Representative position of slot s (its first member).
  int32_t pos(int64_t s) const { return pos_[s]; }
  const int32_t* positions() const { return pos_.data(); }  // [n]
  bool exact(int64_t s) const { return exact_[s] != 0; }
  void set_exact(int64_t s, bool e) { exact_[s] = e ? 1 : 0; }
  const uint8_t* exact_flags() const { return exact_.data(); }  // [n] 1: exact
  int64_t n_members(int64_t s) const { return more_[s].empty() ? 1 : static_cast<int64_t>(more_[s].size()); }
  // Member j of slot s (j < n_members(s)).
  int32_t member(int64_t s, int64_t j) const { return more_[s].empty() ? pos_[s] : more_[s][j]; }
  // Replaces the members of slot s (sorted, non-empty).
  void set_members(int64_t s, const std::vector<int32_t>& members);
  // Makes this cache the slots idx of `src`, in that order (keys, values, biases, members, views).
  void assign_subset(const SlotCache& src, const int32_t* idx, int64_t n);
  // Slot index holding representative position p, or -1.
  int64_t find(int32_t p) const;

  // Alternative views (cms_aggregate): a slot of view 0 is seen by every view; a slot of view j >= 1
  // only by view j. Attention runs once per view over its slots and the outputs are averaged
  // (weights too); a slot's members then count with `share` (1 / views for view slots) in the mass.
  int64_t n_views() const { return n_views_; }
  void set_n_views(int64_t v) { n_views_ = v; }
  int32_t view(int64_t s) const { return view_[s]; }
  const int32_t* views() const { return view_.data(); }  // [n]
  float share(int64_t s) const { return share_[s]; }
  const float* shares() const { return share_.data(); }  // [n]
  // The slots as the attention kernels take them (valid until the cache changes).
  SlotsView slots_view() const { return SlotsView{keys(), values(), biases(), views(), size(), n_views_}; }
  void set_view(int64_t s, int32_t v, float share) {
    view_[s] = v;
    share_[s] = share;
  }

 private:
  int64_t D_ = 0;
  std::vector<float> key_, value_, bias_;
  std::vector<int32_t> pos_;
  std::vector<uint8_t> exact_;
  std::vector<std::vector<int32_t>> more_;  // empty for single-member slots
  std::vector<int32_t> view_;               // 0: seen by every view
  std::vector<float> share_;                // weight of the members in the mass (1 unless viewed)
  int64_t n_views_ = 1;
};

}  // namespace kvsim
