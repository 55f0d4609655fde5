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
  KVSIM_ASSERT(node != 0 && n.live && n.children.empty() && !n.pinned);
  leaves_.erase({n.last_use, n.created, node});
  Node& parent = nodes_[static_cast<size_t>(n.parent)];
  for (auto it = parent.children.begin(); it != parent.children.end(); ++it)
    if (it->second == node) {
      parent.children.erase(it);
      break;
    }
  n.live = false;
  free_.push_back(node);
  --cached_blocks_;
  if (n.parent != 0 && parent.children.empty() && !parent.pinned)
    leaves_.insert({parent.last_use, parent.created, n.parent});
}

void PrefixCache::expire(double now) {
  // The oldest leaf first: an expired block's descendants are expired too (the touch keeps
  // ancestors at least as recent), so its subtree goes leaf by leaf before it becomes a leaf itself.
  while (!leaves_.empty() && now - std::get<0>(*leaves_.begin()) > opt_.ttl) {
    remove_leaf(std::get<2>(*leaves_.begin()));
    ++evictions_ttl_;
  }
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
  for (size_t i = 1; i < path.size(); ++i) {  // touch and pin: out of the evictable leaves
    Node& x = nodes_[static_cast<size_t>(path[i])];
    leaves_.erase({x.last_use, x.created, path[i]});
    x.last_use = now;
    x.pinned = true;
  }
  for (; b < n / B; ++b) {
    while (bytes() + block_bytes_ > opt_.capacity_bytes && !leaves_.empty()) {
      remove_leaf(std::get<2>(*leaves_.begin()));  // the least recently used, then the one cached first
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
  for (size_t i = 1; i < path.size(); ++i) {
    Node& x = nodes_[static_cast<size_t>(path[i])];
    x.pinned = false;
    if (x.children.empty()) leaves_.insert({x.last_use, x.created, path[i]});
  }
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
  std::vector<float> k(static_cast<size_t>(n_tokens * D)), v(k.size());
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t d = 0; d < D; ++d) {
      k[static_cast<size_t>(t * D + d)] = static_cast<float>((t * 7 + d * 3) % 11) - 5.0f;
      v[static_cast<size_t>(t * D + d)] = static_cast<float>((t * 5 + d * 2) % 13) - 6.0f;
    }
  // Codecs with scales from the prompt (fp8) calibrate on these tokens as one KV head: a per-layer
  // scale is then counted whole in each head (an upper bound of Hkv - 1 scales per layer).
  state->calibrate(k.data(), v.data(), 1, n_tokens, 0, n_tokens);
  for (int64_t t = 0; t < n_tokens; ++t)
    state->store(cache, static_cast<int32_t>(t), k.data() + t * D, v.data() + t * D);
  return state->bytes(cache) / static_cast<double>(n_tokens);
}

}  // namespace kvsim
