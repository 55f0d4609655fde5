#include "sim/strategies/slot.h"

namespace kvsim {

void SlotCache::reserve(int64_t n) {
  key_.reserve(n * D_);
  value_.reserve(n * D_);
  bias_.reserve(n);
  pos_.reserve(n);
  exact_.reserve(n);
  more_.reserve(n);
  view_.reserve(n);
  share_.reserve(n);
}

void SlotCache::clear() {
  key_.clear();
  value_.clear();
  bias_.clear();
  pos_.clear();
  exact_.clear();
  more_.clear();
  view_.clear();
  share_.clear();
}

void SlotCache::append_exact(int32_t t, const float* k, const float* v) {
  key_.insert(key_.end(), k, k + D_);
  value_.insert(value_.end(), v, v + D_);
  bias_.push_back(0.0f);
  pos_.push_back(t);
  exact_.push_back(1);
  more_.emplace_back();
  view_.push_back(0);
  share_.push_back(1.0f);
}

void SlotCache::append(const float* k_hat, const float* v_hat, float bias, const std::vector<int32_t>& members,
                       bool exact) {
  KVSIM_ASSERT(!members.empty());
  key_.insert(key_.end(), k_hat, k_hat + D_);
  value_.insert(value_.end(), v_hat, v_hat + D_);
  bias_.push_back(bias);
  pos_.push_back(members[0]);
  exact_.push_back(exact && members.size() == 1 ? 1 : 0);
  more_.emplace_back();
  if (members.size() > 1) more_.back() = members;
  view_.push_back(0);
  share_.push_back(1.0f);
}

void SlotCache::assign_subset(const SlotCache& src, const int32_t* idx, int64_t n) {
  D_ = src.D_;
  clear();
  reserve(n);
  n_views_ = src.n_views_;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = idx[i];
    KVSIM_ASSERT(s >= 0 && s < src.size());
    key_.insert(key_.end(), src.key(s), src.key(s) + D_);
    value_.insert(value_.end(), src.value(s), src.value(s) + D_);
    bias_.push_back(src.bias_[s]);
    pos_.push_back(src.pos_[s]);
    exact_.push_back(src.exact_[s]);
    more_.push_back(src.more_[s]);
    view_.push_back(src.view_[s]);
    share_.push_back(src.share_[s]);
  }
}

void SlotCache::remove(int64_t s) {
  const int64_t last = size() - 1;
  KVSIM_ASSERT(s >= 0 && s <= last);
  if (s != last) {
    std::memcpy(key(s), key(last), sizeof(float) * D_);
    std::memcpy(value(s), value(last), sizeof(float) * D_);
    bias_[s] = bias_[last];
    pos_[s] = pos_[last];
    exact_[s] = exact_[last];
    more_[s] = std::move(more_[last]);
    view_[s] = view_[last];
    share_[s] = share_[last];
  }
  key_.resize(last * D_);
  value_.resize(last * D_);
  bias_.pop_back();
  pos_.pop_back();
  exact_.pop_back();
  more_.pop_back();
  view_.pop_back();
  share_.pop_back();
}

void SlotCache::remove_unless(const std::vector<uint8_t>& keep) {
  KVSIM_ASSERT(static_cast<int64_t>(keep.size()) == size());
  // Walk from the end so that a slot moved into a hole has already been judged.
  for (int64_t s = size() - 1; s >= 0; --s)
    if (!keep[s]) remove(s);
}

void SlotCache::set_members(int64_t s, const std::vector<int32_t>& members) {
  KVSIM_ASSERT(!members.empty());
  pos_[s] = members[0];
  if (members.size() > 1) {
    more_[s] = members;
    exact_[s] = 0;
  } else {
    more_[s].clear();
  }
}

int64_t SlotCache::find(int32_t p) const {
  for (int64_t s = 0; s < size(); ++s)
    if (pos_[s] == p) return s;
  return -1;
}

}  // namespace kvsim
