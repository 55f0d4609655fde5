// Reference statistics of one layer (design.md §3): the exact full-cache attention per (query head,
// step), computed once per trace and backend and shared by every configuration.
#pragma once

#include <cstdint>
#include <vector>

#include "sim/backend.h"
#include "sim/strategy.h"

namespace kvsim {

inline constexpr int64_t kRefTopK = 32;
// Bump when a reference kernel's numbers change: sidecar caches of older revisions are recomputed.
inline constexpr uint32_t kRefStatsRevision = 3;

struct RefStats {
  int64_t H = 0, T = 0, D = 0, K = kRefTopK;
  std::vector<float> o;          // [H, T, D]
  std::vector<double> lse;       // [H, T]
  std::vector<float> entropy;    // [H, T] nats
  std::vector<int32_t> top_pos;  // [H, T, K]
  std::vector<float> top_w;      // [H, T, K]
  void resize(int64_t H_, int64_t T_, int64_t D_, int64_t K_ = kRefTopK);
  double bytes() const;
};

// Runs the backend's attn_stats kernel (ref or omp; cuda throws NotCompiled for now).
void compute_ref_stats(const LayerView& lv, Backend b, RefStats& out);
// colsum [H, P] of the prompt's attention (LayerView::prompt_colsums) with the backend's kernel.
void compute_prompt_colsums(const LayerView& lv, const RefStats& rs, int64_t P, Backend b, std::vector<float>& out);

}  // namespace kvsim
