// `kvsim best`: grid-search answers from the results store. Each configuration is one point
// (memory ratio, metric value), both the mean over its finished runs of the run summary's mean;
// the Pareto front keeps the points no other point beats on both (lower ratio; better metric,
// respecting the metric's direction).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvsim::tools {

// One configuration under one protocol; spec carries " [protocol]" unless the protocol is evict.
struct BestPoint {
  std::string strategy, spec, protocol = "evict";
  double ratio = 0, value = 0;
  int64_t runs = 0;
};

// Indices of the Pareto-optimal points, sorted by ratio (then better value, then spec). Ties:
// of points with equal ratio and value only the first in that order is kept.
std::vector<size_t> pareto_front(const std::vector<BestPoint>& pts, bool higher_better);

// Index of the best point with ratio <= max_ratio (better value, then lower ratio, then spec), or -1.
int64_t best_under(const std::vector<BestPoint>& pts, double max_ratio, bool higher_better);

// Which runs count (empty / -1: all).
struct BestFilter {
  std::string sequence, trace;  // trace: a substring of the trace's path
  std::string protocol;         // evict | prefill | sparse
  int64_t prefill = -1;
};

// Per configuration means over its done runs, from the store at `db` (UsageError: no such file,
// no finished runs (matching the filter); FormatError: not a store / another schema version).
std::vector<BestPoint> load_points(const std::string& db, int metric, const BestFilter& filter = {});

}  // namespace kvsim::tools
