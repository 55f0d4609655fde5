// Merging adjacent slots (entropy_merge and kin). A merged slot's key and value are the weighted
// mean of its members' (running, so the rule also works online where originals are gone), its
// bias is log(members) under proportional attention, and its score is the sum of its parts'.
#pragma once

#include <cstdint>
#include <vector>

#include "sim/strategies/slot.h"

namespace kvsim {

struct MergeRule {
  double threshold = 0.5;  // a token is mergeable when its normalized entropy >= threshold
  int64_t sinks = 4;       // first tokens never merged
  int64_t recent = 8;      // newest tokens never merged
  int64_t max_span = 16;   // members per merged slot at most
  bool proportional = true;
};

// Per-position state the merge pass reads and updates. Indexed by a slot's representative
// position (its first member).
struct MergeState {
  std::vector<double> score;   // accumulated attention
  std::vector<double> weight;  // merge weight of the slot (sum over members)
};

// Normalized entropy of token i's own attention row: H_i / log(i + 1) in [0, 1], 0 for i = 0.
float normalized_entropy(float entropy_nats, int64_t i);

// One merge pass at step t: walks the slots in position order, forms maximal runs of adjacent
// mergeable slots (a slot is mergeable when it lies outside the sinks and the recent window and
// is either already merged or an exact token with h_norm >= threshold), cuts each run greedily
// into pieces of at most max_span members, and merges every piece of two or more slots into its
// first slot. "Adjacent" means neighbours in the cache's position order. Returns the number of
// slots removed.
int64_t merge_adjacent_runs(SlotCache& cache, const MergeRule& rule, const float* h_norm /* [T] */, MergeState& st,
                            int64_t t);

// Tokens that are members of merged slots.
int64_t merged_tokens(const SlotCache& cache);

}  // namespace kvsim
