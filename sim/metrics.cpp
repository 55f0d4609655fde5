#include "sim/metrics.h"

#include "sim/kernels/attend_views.h"

#include <algorithm>
#include <cmath>

#include "sim/base/error.h"
#include "sim/kernels/omp/exp_f64.h"

namespace kvsim {

namespace {
// clang-format off
const char* const kNames[kNumMetrics] = {"out_cos",      "out_rel_l2",    "mass",          "kl",        "tv",
                                         "topk8_recall", "topk32_recall", "logit_rel_err", "k_rel_err", "v_rel_err",
                                         "bytes",        "ratio",         "read_bytes",    "read_ratio"};
// clang-format on
}  // namespace

const char* metric_name(int m) { return kNames[m]; }
const char* metric_name(Metric m) { return kNames[static_cast<int>(m)]; }

int parse_metric(const std::string& s) {
  std::string list;
  for (int i = 0; i < kNumMetrics; ++i) {
    if (s == kNames[i]) return i;
    list += (list.empty() ? "" : ", ") + std::string(kNames[i]);
  }
  throw UsageError("unknown metric '" + s + "' (valid: " + list + ")");
}

bool higher_is_better(int m) {
  auto x = static_cast<Metric>(m);
  return x == Metric::out_cos || x == Metric::mass || x == Metric::topk8_recall || x == Metric::topk32_recall;
}

CacheErrors cache_errors(const SlotCache& c, const float* k_orig, const float* v_orig, const float* k_norm, int64_t D) {
  bool any_inexact = false;
  for (int64_t s = 0; s < c.size() && !any_inexact; ++s) any_inexact = !c.exact(s);
  if (!any_inexact) return {0.0, 0.0};  // every slot holds its token exactly: no reconstruction error
  double kn = 0, kd = 0, vn = 0, vd = 0;
  for (int64_t s = 0; s < c.size(); ++s) {
    const double share = c.share(s);  // a token in several views counts once in all
    for (int64_t j = 0; j < c.n_members(s); ++j) {
      const int64_t i = c.member(s, j);
      const float* ki = k_orig + i * D;
      const float* vi = v_orig + i * D;
      kd += share * static_cast<double>(k_norm[i]) * k_norm[i];
      double vv = 0;
      for (int64_t x = 0; x < D; ++x) vv += static_cast<double>(vi[x]) * vi[x];
      vd += share * vv;
      if (c.exact(s)) continue;  // k̂ = k, v̂ = v: no error
      const float* kh = c.key(s);
      const float* vh = c.value(s);
      double dk = 0, dv = 0;
      for (int64_t x = 0; x < D; ++x) {
        dk += (static_cast<double>(ki[x]) - kh[x]) * (static_cast<double>(ki[x]) - kh[x]);
        dv += (static_cast<double>(vi[x]) - vh[x]) * (static_cast<double>(vi[x]) - vh[x]);
      }
      kn += share * dk;
      vn += share * dv;
    }
  }
  return {kd > 0 ? std::sqrt(kn / kd) : 0.0, vd > 0 ? std::sqrt(vn / vd) : 0.0};
}

double kl_bucket(const double* pbar, const double* q, int64_t n, double m, double eps) {
  const double u = eps / static_cast<double>(n + 1);
  double kl = 0;
  if (u >= 1e-300 && u <= 1.0) {
    // One vectorised pass (log_pos): the ratio r <= p / u is finite; a zero p gives r = 0, whose
    // log_pos is finite (-709), times p = 0; a p below ~1e-300 gives a subnormal r whose term
    // (|p log r| < 1e-297) is negligible.
#pragma omp simd reduction(+ : kl)
    for (int64_t s = 0; s < n; ++s) kl += pbar[s] * omp::log_pos(pbar[s] / ((1.0 - eps) * q[s] + u));
  } else {
    for (int64_t s = 0; s < n; ++s) {
      const double p = pbar[s];
      if (p <= 0) continue;
      kl += p * std::log(p / ((1.0 - eps) * q[s] + u));
    }
  }
  const double bucket = std::max(0.0, 1.0 - m);
  if (bucket > 0) kl += bucket * std::log(bucket / u);
  return kl;
}

double kl_pure_eviction(double m, double eps, int64_t n) {
  double kl = m > 0 ? m * std::log(m / (1.0 - eps)) : 0.0;
  if (m < 1) kl += (1 - m) * std::log((1 - m) * static_cast<double>(n + 1) / eps);
  return kl;
}

void measure_step(const StepInputs& in, const CacheErrors& ce, MetricRow& out) {
  const SlotCache& c = *in.cache;
  const int64_t n = c.size(), D = in.D;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  // Slot-level full mass P̄_s = sum of exact P_i over its members; exact logits z_i for logit_rel_err.
  thread_local std::vector<double> pbar, qd;
  pbar.resize(n), qd.resize(n);
  double m = 0, zz = 0, dz = 0;
  // Compressed Q recomputed in double from the logits (the kernel's float weights feed `observe`).
  if (c.views() && c.n_views() > 1) {
    view_softmax(in.logit, c.views(), c.n_views(), n, qd.data());
  } else {  // view_softmax's one-view case with the vectorised exp
    double mx = -INFINITY, sum = 0;
#pragma omp simd reduction(max : mx)
    for (int64_t s = 0; s < n; ++s) mx = std::max(mx, in.logit[s]);
#pragma omp simd reduction(+ : sum)
    for (int64_t s = 0; s < n; ++s) sum += (qd[s] = omp::exp_nonpos(in.logit[s] - mx));
#pragma omp simd
    for (int64_t s = 0; s < n; ++s) qd[s] /= sum;
  }
  // Exact slots in one vectorised pass: mass exp(z - lse) (exp_nonpos, 2 ulp: z <= lse up to
  // rounding, and it is exact at small positive arguments too), z^2 for logit_rel_err.
  const uint8_t* exact = c.exact_flags();
  const float *bias = c.biases(), *share = c.shares();
  double* pb = pbar.data();
#pragma omp simd reduction(+ : m, zz)
  for (int64_t s = 0; s < n; ++s) {
    const double z = in.logit[s] - bias[s];
    const double e = omp::exp_nonpos(z - in.lse_ref);  // unconditional: the simd variant is notinbranch
    const double ps = exact[s] ? e * share[s] : 0.0;   // share: a token in several views counts once
    pb[s] = ps;
    m += ps;
    zz += exact[s] ? z * z : 0.0;
  }
  // The others from their members' exact logits.
  for (int64_t s = 0; s < n; ++s) {
    if (exact[s]) continue;
    double ps = 0;
    const float* kh = c.key(s);
    for (int64_t j = 0; j < c.n_members(s); ++j) {
      const float* ki = in.k_orig + static_cast<int64_t>(c.member(s, j)) * D;
      double d = 0;
      for (int64_t x = 0; x < D; ++x) d += static_cast<double>(in.q[x]) * ki[x];
      const double z = d * scale;
      ps += std::exp(z - in.lse_ref);
      if (c.n_members(s) == 1) {  // unmerged but not exact: quantization error as attention sees it
        double dh = 0;
        for (int64_t x = 0; x < D; ++x) dh += static_cast<double>(in.q[x]) * kh[x];
        zz += z * z;
        dz += (z - dh * scale) * (z - dh * scale);
      }
    }
    ps *= share[s];  // a token standing in several views counts once in all
    pb[s] = ps;
    m += ps;
  }
  // Output error.
  double dot = 0, nr = 0, nh = 0, diff = 0;
  for (int64_t x = 0; x < D; ++x) {
    const double a = in.o_ref[x], b = in.o_hat[x];
    dot += a * b, nr += a * a, nh += b * b, diff += (a - b) * (a - b);
  }
  out[int(Metric::out_cos)] = (nr > 0 && nh > 0) ? dot / std::sqrt(nr * nh) : (nr == nh ? 1.0 : 0.0);
  out[int(Metric::out_rel_l2)] = nr > 0 ? std::sqrt(diff / nr) : std::sqrt(diff);
  out[int(Metric::mass)] = m;
  out[int(Metric::kl)] = kl_bucket(pbar.data(), qd.data(), n, m, in.eps);
  double tv = 0;
  for (int64_t s = 0; s < n; ++s) tv += std::fabs(pbar[s] - qd[s]);
  out[int(Metric::tv)] = 0.5 * tv + 0.5 * std::max(0.0, 1.0 - m);
  // Recall of the exact top-k positions (k = 8, 32; fewer when t + 1 < k).
  for (int kk : {8, 32}) {
    const int64_t k = std::min<int64_t>(std::min<int64_t>(kk, in.K), in.t + 1);
    int64_t hit = 0, tot = 0;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t p = in.top_pos[j];
      if (p < 0) break;
      ++tot;
      hit += in.present[p] ? 1 : 0;
    }
    out[int(kk == 8 ? Metric::topk8_recall : Metric::topk32_recall)] = tot ? double(hit) / double(tot) : 1.0;
  }
  out[int(Metric::logit_rel_err)] = zz > 0 ? std::sqrt(dz / zz) : 0.0;
  out[int(Metric::k_rel_err)] = ce.k_rel_err;
  out[int(Metric::v_rel_err)] = ce.v_rel_err;
}

MetricSummary summarize(std::vector<double> v, bool higher_better) {
  MetricSummary r;
  r.n = static_cast<int64_t>(v.size());
  if (v.empty()) return r;
  std::sort(v.begin(), v.end());
  double sum = 0;
  for (double x : v) sum += x;
  r.mean = sum / static_cast<double>(v.size());
  auto pct = [&](double p) {
    const double pos = p * static_cast<double>(v.size() - 1);
    const size_t lo = static_cast<size_t>(std::floor(pos));
    const size_t hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
  };
  r.p5 = pct(0.05), r.p50 = pct(0.5), r.p95 = pct(0.95);
  r.worst = higher_better ? v.front() : v.back();
  return r;
}

}  // namespace kvsim
