// A KV prefix cache of a serving engine (`kvsim prefix`): requests are token sequences that arrive in
// time order; the cache holds the KV of token prefixes at block granularity (a radix tree whose
// edges are one block of `block` tokens each, so a request reuses its longest cached prefix of whole
// blocks), within a capacity in bytes. Each cached token costs `bytes_per_token` bytes (all layers,
// KV heads, keys and values), taken from a codec's own byte accounting (codec_bytes_per_token).
//
// Per request at time `now` (service is instantaneous: a request's blocks are cached at its arrival):
//   1. TTL: every block idle longer than `ttl` seconds (now - last_use > ttl) is dropped;
//   2. match: the longest cached prefix of whole blocks, at most floor((n - 1) / block) blocks (the
//      last token is always computed, for its logits, as paged engines do) -> hit tokens;
//   3. touch: every block on the request's path gets last_use = now;
//   4. insert: the request's further whole blocks, in order; while one does not fit, the least
//      recently used leaf block not on this request's path is evicted (ties: the one cached first);
//      when nothing else can go, the rest of the request is not cached.
// Only leaves are evicted: a block's ancestors are its prefix, and the touch keeps ancestors at
// least as recent as their descendants, so TTL also removes leaves first.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "sim/strategies/codec.h"

namespace kvsim {

struct PrefixRequest {
  std::vector<int32_t> ids;
  double arrival = 0;   // seconds, non-decreasing over a workload
  std::string session;  // optional label (multi-turn chats, agent loops)
};

struct PrefixCacheOptions {
  int64_t block = 16;                                    // tokens per cached block
  double capacity_bytes = 0;                             // >= 0
  double bytes_per_token = 0;                            // > 0
  double ttl = std::numeric_limits<double>::infinity();  // seconds an idle block survives; inf: no TTL
};

// One request as the cache served it.
struct PrefixServe {
  int64_t tokens = 0;      // request length
  int64_t hit = 0;         // tokens reused from the cache (prefill tokens saved)
  int64_t inserted = 0;    // tokens newly cached
  double bytes_after = 0;  // bytes held once it was served
};

class PrefixCache {
 public:
  explicit PrefixCache(const PrefixCacheOptions& opt);  // throws UsageError on bad options
  PrefixServe serve(const int32_t* ids, int64_t n, double now);

  double bytes() const { return static_cast<double>(cached_blocks_) * block_bytes_; }
  int64_t cached_blocks() const { return cached_blocks_; }
  int64_t evictions_ttl() const { return evictions_ttl_; }  // blocks dropped by TTL
  int64_t evictions_lru() const { return evictions_lru_; }  // blocks dropped to make room
  const PrefixCacheOptions& options() const { return opt_; }

 private:
  struct Node {
    int32_t parent = -1;
    std::map<std::vector<int32_t>, int32_t> children;  // block tokens -> node
    double last_use = 0;
    int64_t created = 0;  // insertion order, the LRU tie-break
    bool live = false;
    bool pinned = false;  // on the path of the request being served
  };
  void expire(double now);
  void remove_leaf(int32_t node);  // a leaf in leaves_
  int32_t new_node(int32_t parent, double now);

  PrefixCacheOptions opt_;
  double block_bytes_;
  std::vector<Node> nodes_;  // nodes_[0]: the root (the empty prefix, costs nothing)
  std::vector<int32_t> free_;
  // The evictable blocks: live leaves other than the root that are not pinned, in eviction order
  // (last use, then insertion order), each as (last_use, created, node).
  std::set<std::tuple<double, int64_t, int32_t>> leaves_;
  int64_t cached_blocks_ = 0, created_ = 0, evictions_ttl_ = 0, evictions_lru_ = 0;
};

// A whole workload through one cache.
struct PrefixStats {
  int64_t requests = 0, tokens = 0, hit_tokens = 0, hit_requests = 0;
  int64_t evictions_ttl = 0, evictions_lru = 0;
  double peak_bytes = 0, mean_bytes = 0, final_bytes = 0;  // mean: over requests, after each
  std::vector<PrefixServe> served;                         // per request, in order
  double token_hit_rate() const { return tokens > 0 ? double(hit_tokens) / double(tokens) : 0.0; }
  double request_hit_rate() const { return requests > 0 ? double(hit_requests) / double(requests) : 0.0; }
};
// Throws UsageError when arrivals decrease (naming the request) or the options are bad.
PrefixStats simulate_prefix_cache(const std::vector<PrefixRequest>& workload, const PrefixCacheOptions& opt);

// Bytes per cached token of one (layer, KV head) under `codec`: its state stores n_tokens tokens of
// head dim D (through CodecState::store, the path of every replay and of `kvsim ppl`) and
// bytes() / n_tokens is the rate, its fp16 residual windows and group parameters amortized over
// n_tokens. Multiply by L * Hkv for a model. Throws UsageError when the codec does not fit D.
double codec_bytes_per_token(const Codec& codec, int64_t D, int64_t n_tokens);

}  // namespace kvsim
