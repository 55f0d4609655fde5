#include "sim/prefix_cache.h"

#include <cmath>

#include "sim/base/error.h"
#include "sim/strategies/slot.h"

namespace kvsim {

PrefixCache::PrefixCache(const PrefixCacheOptions& opt) : opt_(opt) {
  if (opt.block < 1) throw UsageError("prefix cache: block " + std::to_string(opt.block) + " must be >= 1");
  if (!(opt.capacity_bytes >= 0) || !std::isfinite(opt.capacity_bytes))
    throw UsageError("prefix cache: capacity " + std::to_string(opt.capacity_bytes) + " bytes must be >= 0");
  if (!(opt.bytes_per_token > 0) || !std::isfinite(opt.bytes_per_token))
    throw UsageError("prefix cache: bytes per token " + std::to_string(opt.bytes_per_token) + " must be > 0");
  if (!(opt.ttl >= 0)) throw UsageError("prefix cache: ttl " + std::to_string(opt.ttl) + " s must be >= 0");
  block_bytes_ = opt.bytes_per_token * static_cast<double>(opt.block);
  nodes_.emplace_back();
  nodes_[0].live = true;
}

int32_t PrefixCache::new_node(int32_t parent, double now) {
  int32_t id;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
  } else {
    id = static_cast<int32_t>(nodes_.size());
    nodes_.emplace_back();
  }
  Node& n = nodes_[static_cast<size_t>(id)];
  n.parent = parent;
  n.children.clear();
  n.last_use = now;
  n.created = created_++;
  n.live = true;
  n.pinned = false;
  ++cached_blocks_;
  return id;
}

void PrefixCache::remove_leaf(int32_t node) {
  Node& n = nodes_[static_cast<size_t>(node)];
  KVSIM_ASSERT(node != 0 && n.live && n.children.empty());
  auto& siblings = nodes_[static_cast<size_t>(n.parent)].children;
  for (auto it = siblings.begin(); it != siblings.end(); ++it)
    if (it->second == node) {
      siblings.erase(it);
      break;
    }
  n.live = false;
  free_.push_back(node);
  --cached_blocks_;
}

void PrefixCache::expire(double now) {
  if (std::isinf(opt_.ttl)) return;
  // Post-order over the tree: an expired block's descendants are expired too (the touch keeps
  // ancestors at least as recent), so children go before their parent.
  std::vector<std::pair<int32_t, bool>> stack{{0, false}};
  while (!stack.empty()) {
    auto [id, done] = stack.back();
    stack.pop_back();
    if (!done) {
      stack.push_back({id, true});
      for (const auto& [tokens, child] : nodes_[static_cast<size_t>(id)].children) stack.push_back({child, false});
    } else if (id != 0 && now - nodes_[static_cast<size_t>(id)].last_use > opt_.ttl) {
      remove_leaf(id);
      ++evictions_ttl_;
    }
  }
}

int32_t PrefixCache::lru_leaf() const {
  int32_t best = -1;
  for (size_t i = 1; i < nodes_.size(); ++i) {
    const Node& n = nodes_[i];
    if (!n.live || !n.children.empty() || n.pinned) continue;
    const Node* b = best < 0 ? nullptr : &nodes_[static_cast<size_t>(best)];
    if (!b || n.last_use < b->last_use || (n.last_use == b->last_use && n.created < b->created))
      best = static_cast<int32_t>(i);
  }
  return best;
}

PrefixServe PrefixCache::serve(const int32_t* ids, int64_t n, double now) {
  expire(now);
  PrefixServe r;
  r.tokens = n;
  const int64_t B = opt_.block;
  const int64_t max_hit_blocks = n > 0 ? (n - 1) / B : 0;
  std::vector<int32_t> path{0};
  int64_t b = 0;
  for (; b < n / B; ++b) {
    const std::vector<int32_t> key(ids + b * B, ids + (b + 1) * B);
    const auto& children = nodes_[static_cast<size_t>(path.back())].children;
    auto it = children.find(key);
    if (it == children.end()) break;
    path.push_back(it->second);
  }
  r.hit = std::min<int64_t>(b, max_hit_blocks) * B;
  for (int32_t id : path) {
    nodes_[static_cast<size_t>(id)].last_use = now;
    nodes_[static_cast<size_t>(id)].pinned = true;
  }
  for (; b < n / B; ++b) {
    while (bytes() + block_bytes_ > opt_.capacity_bytes) {
      const int32_t victim = lru_leaf();
      if (victim < 0) break;
      remove_leaf(victim);
      ++evictions_lru_;
    }
    if (bytes() + block_bytes_ > opt_.capacity_bytes) break;
    const int32_t parent = path.back();
    const int32_t id = new_node(parent, now);
    nodes_[static_cast<size_t>(parent)].children.emplace(std::vector<int32_t>(ids + b * B, ids + (b + 1) * B), id);
    nodes_[static_cast<size_t>(id)].pinned = true;
    path.push_back(id);
    r.inserted += B;
  }
  for (int32_t id : path) nodes_[static_cast<size_t>(id)].pinned = false;
  r.bytes_after = bytes();
  return r;
}

PrefixStats simulate_prefix_cache(const std::vector<PrefixRequest>& workload, const PrefixCacheOptions& opt) {
  PrefixCache cache(opt);
  PrefixStats s;
  double sum_bytes = 0;
  for (size_t i = 0; i < workload.size(); ++i) {
    const PrefixRequest& q = workload[i];
    if (i > 0 && q.arrival < workload[i - 1].arrival)
      throw UsageError("workload: request " + std::to_string(i) + " arrives at " + std::to_string(q.arrival) +
                       " s, before request " + std::to_string(i - 1) + " (" + std::to_string(workload[i - 1].arrival) +
                       " s): arrivals must not decrease");
    const PrefixServe r = cache.serve(q.ids.data(), static_cast<int64_t>(q.ids.size()), q.arrival);
    ++s.requests;
    s.tokens += r.tokens;
    s.hit_tokens += r.hit;
    s.hit_requests += r.hit > 0 ? 1 : 0;
    s.peak_bytes = std::max(s.peak_bytes, r.bytes_after);
    sum_bytes += r.bytes_after;
    s.served.push_back(r);
  }
  s.evictions_ttl = cache.evictions_ttl();
  s.evictions_lru = cache.evictions_lru();
  s.final_bytes = cache.bytes();
  s.mean_bytes = s.requests > 0 ? sum_bytes / static_cast<double>(s.requests) : 0.0;
  return s;
}

double codec_bytes_per_token(const Codec& codec, int64_t D, int64_t n_tokens) {
  if (n_tokens < 1) throw UsageError("bytes per token: " + std::to_string(n_tokens) + " tokens must be >= 1");
  auto state = codec.make_state(D, n_tokens);
  SlotCache cache(D, n_tokens);
  // The bytes depend on which tokens are quantized, not on their values; varied values keep every
  // quantization group non-degenerate all the same.
  std::vector<float> k(static_cast<size_t>(D)), v(static_cast<size_t>(D));
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t d = 0; d < D; ++d) {
      k[static_cast<size_t>(d)] = static_cast<float>((t * 7 + d * 3) % 11) - 5.0f;
      v[static_cast<size_t>(d)] = static_cast<float>((t * 5 + d * 2) % 13) - 6.0f;
    }
    state->store(cache, static_cast<int32_t>(t), k.data(), v.data());
  }
  return state->bytes(cache) / static_cast<double>(n_tokens);
}

}  // namespace kvsim
