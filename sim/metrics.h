// The metrics of design.md §4 for one query head at one step, and their summaries over steps
// (mean, p5, p50, p95, worst) and per-position curves in bins.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "sim/strategies/slot.h"

namespace kvsim {

enum class Metric : int {
  out_cos,
  out_rel_l2,
  mass,
  kl,
  tv,
  topk8_recall,
  topk32_recall,
  logit_rel_err,
  k_rel_err,
  v_rel_err,
  bytes,
  ratio,
  read_bytes,  // bytes the step's attention read (bytes held under protocols evict, prefill; a subset under sparse)
  read_ratio   // read_bytes / bytes of an fp16 full cache of t + 1 tokens
};
inline constexpr int kNumMetrics = 14;
const char* metric_name(Metric m);
const char* metric_name(int m);
int parse_metric(const std::string& s);  // throws UsageError listing the metrics
// out_cos, mass and the recalls are better high: their worst is the minimum; the others' the maximum.
bool higher_is_better(int m);

using MetricRow = std::array<double, kNumMetrics>;

// Everything one query head needs at step t (the exact reference plus the compressed cache).
struct StepInputs {
  int64_t t = 0, D = 0, K = 32;
  const float* q = nullptr;          // [D] q_t of this query head
  const float* o_ref = nullptr;      // [D] exact output
  double lse_ref = 0;                // log-sum-exp of the exact scaled logits over 0..t
  const int32_t* top_pos = nullptr;  // [K] exact top-K positions, best first (-1 padded)
  const float* k_orig = nullptr;     // [T, D] original keys of this KV head
  const float* v_orig = nullptr;     // [T, D] original values
  const float* k_norm = nullptr;     // [T] their L2 norms
  const SlotCache* cache = nullptr;
  const double* logit = nullptr;     // [n] compressed scaled logits (with bias) of this head
  const float* w = nullptr;          // [n] compressed attention Q (float; metrics recompute Q in double)
  const float* o_hat = nullptr;      // [D] compressed output
  const uint8_t* present = nullptr;  // [T] 1 where a position is a member of some slot
  double eps = 1e-6;
};

// Per-KV-head parts (k_rel_err, v_rel_err) are computed once per cache and passed in.
struct CacheErrors {
  double k_rel_err = 0, v_rel_err = 0;
};
CacheErrors cache_errors(const SlotCache& cache, const float* k_orig, const float* v_orig, const float* k_norm,
                         int64_t D);

// Fills every metric except bytes, ratio, read_bytes and read_ratio (the engine knows the codec,
// the strategy state and the selection).
void measure_step(const StepInputs& in, const CacheErrors& ce, MetricRow& out);

// kl of design.md §4 from slot masses P̄ [n], compressed Q [n] and retained mass m.
double kl_bucket(const double* pbar, const double* q, int64_t n, double m, double eps);
// Closed form for pure eviction (P̄_s = m·Q_s): KL = m log(m/(1-ε)) + (1-m) log((1-m)(n+1)/ε) - r,
// with 0 <= r <= m·n·ε/((n+1)(1-ε)); returns the value at r = 0 (an upper bound within ε).
double kl_pure_eviction(double m, double eps, int64_t n);

struct MetricSummary {
  double mean = 0, p5 = 0, p50 = 0, p95 = 0, worst = 0;
  int64_t n = 0;
};
// Percentiles interpolate linearly between order statistics (numpy's default).
MetricSummary summarize(std::vector<double> values, bool higher_better);

}  // namespace kvsim
