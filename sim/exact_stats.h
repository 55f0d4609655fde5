// Exact statistics of one layer (design.md §3 "reference statistics"): the exact full-cache
// attention per (query head, step), computed once per trace and backend (on any backend: the name
// says what they are, not where they run) and shared by every configuration.
#pragma once

#include <cstdint>
#include <vector>

#include "sim/kernels/backend.h"
#include "sim/strategies/strategy.h"

namespace kvsim {

inline constexpr int64_t kExactTopK = 32;
// Bump a backend's revision when its reference kernel's numbers change: sidecar caches (one per
// backend) of older revisions are recomputed. omp 4: register-blocked logits, float values per key
// tile, tiles latest first.
inline constexpr uint32_t exact_stats_revision(Backend b) { return b == Backend::omp ? 4 : 3; }

struct ExactStats {
  int64_t H = 0, T = 0, D = 0, K = kExactTopK;
  std::vector<float> o;          // [H, T, D]
  std::vector<double> lse;       // [H, T]
  std::vector<float> entropy;    // [H, T] nats
  std::vector<int32_t> top_pos;  // [H, T, K]
  std::vector<float> top_w;      // [H, T, K]
  void resize(int64_t H_, int64_t T_, int64_t D_, int64_t K_ = kExactTopK);
  double bytes() const;
};

// Runs the backend's attn_stats kernel (sim/kernels/attn_stats.h).
void compute_exact_stats(const LayerView& lv, Backend b, ExactStats& out);
// colsum [H, P] of the prompt's attention (LayerView::prompt_colsums) with the backend's kernel.
void compute_prompt_colsums(const LayerView& lv, const ExactStats& rs, int64_t P, Backend b, std::vector<float>& out);

}  // namespace kvsim
