// Metrics of design.md §4 on cases small enough to compute by hand (T <= 6, D = 4).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "sim/kernels/attend.h"
#include "sim/metrics.h"
#include "sim/strategies/codec.h"
#include "sim/strategies/slot.h"

using namespace kvsim;

namespace {

// The common case: D = 4, so logits are q·k / 2. q = (2, 0, 0, 0) makes logit z_i = k_i[0].
// Keys k_i = (z_i, 0, 0, 0) with z = (0, 0, ln 2, ln 4): exp(z) = (1, 1, 2, 4), sum 8, lse = ln 8,
// P = (1/8, 1/8, 1/4, 1/2). Values are one-hot: v_i = e_i, so o = P = (1/8, 1/8, 1/4, 1/2).
// Tolerances of 1e-7: the keys hold ln 2 and ln 4 rounded to float (relative error ~3e-8).
struct Hand {
  static constexpr int64_t T = 4, D = 4;
  float q[4] = {2, 0, 0, 0};
  std::vector<float> k, v, k_norm;
  float o[4] = {0.125f, 0.125f, 0.25f, 0.5f};
  int32_t top[32];
  Hand() : k(T * D, 0.0f), v(T * D, 0.0f), k_norm(T) {
    const float z[4] = {0.0f, 0.0f, std::log(2.0f), std::log(4.0f)};
    for (int i = 0; i < T; ++i) k[i * D] = z[i], v[i * D + i] = 1.0f, k_norm[i] = std::fabs(z[i]);
    // Exact top-k: 3 (1/2), 2 (1/4), then the tie 0, 1 broken by the lower position first.
    for (int j = 0; j < 32; ++j) top[j] = -1;
    top[0] = 3, top[1] = 2, top[2] = 0, top[3] = 1;
  }
  MetricRow measure(const SlotCache& c, double eps = 1e-6) {
    const int64_t n = c.size();
    std::vector<double> logit(n);
    std::vector<float> w(n), oh(D);
    ref::attend_slots(q, D, 1, D, c.slots_view(), logit.data(), w.data(), oh.data());
    std::vector<uint8_t> present(T, 0);
    for (int64_t s = 0; s < n; ++s)
      for (int64_t j = 0; j < c.n_members(s); ++j) present[c.member(s, j)] = 1;
    StepInputs in;
    in.t = T - 1, in.D = D, in.K = 32, in.eps = eps;
    in.q = q, in.o_ref = o, in.lse_ref = std::log(8.0), in.top_pos = top;
    in.k_orig = k.data(), in.v_orig = v.data(), in.k_norm = k_norm.data();
    in.cache = &c, in.logit = logit.data(), in.w = w.data(), in.o_hat = oh.data(), in.present = present.data();
    MetricRow r{};
    measure_step(in, cache_errors(c, k.data(), v.data(), k_norm.data(), D), r);
    return r;
  }
};

double M(const MetricRow& r, Metric m) { return r[int(m)]; }

}  // namespace

TEST_CASE("metrics: full cache of 4 tokens is exact") {
  Hand h;
  SlotCache c(4, 4);
  for (int32_t i = 0; i < 4; ++i) c.append_exact(i, &h.k[i * 4], &h.v[i * 4]);
  MetricRow r = h.measure(c);
  CHECK(M(r, Metric::out_cos) == doctest::Approx(1.0).epsilon(1e-12));
  CHECK(M(r, Metric::out_rel_l2) < 1e-7);
  CHECK(M(r, Metric::mass) == doctest::Approx(1.0).epsilon(1e-7));
  CHECK(M(r, Metric::tv) < 1e-7);
  // kl = sum P log(P / ((1-e)P + e/5)); per term -log(1 - e + e/(5P)) ~ e (1 - 1/(5P)):
  // 2 x 1/8 x e (1 - 8/5) + 1/4 x e (1 - 4/5) + 1/2 x e (1 - 2/5) = e (-0.15 + 0.05 + 0.3) = 0.2 e.
  CHECK(M(r, Metric::kl) == doctest::Approx(0.2e-6).epsilon(1e-4));
  CHECK(M(r, Metric::topk8_recall) == 1.0);
  CHECK(M(r, Metric::topk32_recall) == 1.0);
  CHECK(M(r, Metric::logit_rel_err) == 0.0);
  CHECK(M(r, Metric::k_rel_err) == 0.0);
  CHECK(M(r, Metric::v_rel_err) == 0.0);
}

TEST_CASE("metrics: evicting tokens 0 and 1 (hand computed)") {
  Hand h;
  SlotCache c(4, 4);
  for (int32_t i = 2; i < 4; ++i) c.append_exact(i, &h.k[i * 4], &h.v[i * 4]);
  MetricRow r = h.measure(c);
  // Q over slots {2, 3} = (2, 4) / 6 = (1/3, 2/3); o_hat = (0, 0, 1/3, 2/3).
  // mass m = P_2 + P_3 = 1/4 + 1/2 = 3/4.
  CHECK(M(r, Metric::mass) == doctest::Approx(0.75).epsilon(1e-7));
  // o·o_hat = 1/4·1/3 + 1/2·2/3 = 5/12; |o|^2 = 1/64 + 1/64 + 1/16 + 1/4 = 11/32; |o_hat|^2 = 5/9.
  // cos = (5/12) / sqrt(11/32 · 5/9) = (5/12) / sqrt(55/288) = 0.953462...
  CHECK(M(r, Metric::out_cos) == doctest::Approx((5.0 / 12) / std::sqrt(55.0 / 288)).epsilon(1e-7));
  CHECK(M(r, Metric::out_cos) == doctest::Approx(0.9534626).epsilon(1e-6));
  // o - o_hat = (1/8, 1/8, -1/12, -1/6): |.|^2 = (9 + 9 + 4 + 16)/576 = 38/576;
  // rel_l2 = sqrt((38/576) / (11/32)) = sqrt(1216/6336) = 0.438086...
  CHECK(M(r, Metric::out_rel_l2) == doctest::Approx(std::sqrt(1216.0 / 6336)).epsilon(1e-7));
  // tv = 1/2 (|1/4 - 1/3| + |1/2 - 2/3|) + 1/2 (1 - 3/4) = 1/2 (1/12 + 1/6) + 1/8 = 1/4.
  CHECK(M(r, Metric::tv) == doctest::Approx(0.25).epsilon(1e-7));
  // kl (eps -> 0): 1/4 ln(3/4) + 1/2 ln(3/4) + 1/4 ln(1/4 / (eps/3)) = 3/4 ln(3/4) + 1/4 ln(750000)
  //   = -0.2157616 + 3.3819570 = 3.1661954 (eps = 1e-6, n = 2 slots + bucket).
  CHECK(M(r, Metric::kl) == doctest::Approx(0.75 * std::log(0.75) + 0.25 * std::log(750000.0)).epsilon(1e-6));
  CHECK(M(r, Metric::kl) == doctest::Approx(3.1661954).epsilon(1e-6));
  // Exact top positions (3, 2, 0, 1): 2 of the 4 (t + 1 = 4 < 8) are held.
  CHECK(M(r, Metric::topk8_recall) == 0.5);
  CHECK(M(r, Metric::topk32_recall) == 0.5);
  CHECK(M(r, Metric::logit_rel_err) == 0.0);
  CHECK(M(r, Metric::k_rel_err) == 0.0);
  CHECK(M(r, Metric::v_rel_err) == 0.0);
}

TEST_CASE("metrics: a merged slot with proportional attention reproduces the output") {
  Hand h;
  SlotCache c(4, 4);
  // Tokens 0 and 1 merged: key = mean = (0,0,0,0), value = mean = (1/2, 1/2, 0, 0), bias ln 2.
  const float km[4] = {0, 0, 0, 0}, vm[4] = {0.5f, 0.5f, 0, 0};
  c.append(km, vm, std::log(2.0f), {0, 1}, false);
  for (int32_t i = 2; i < 4; ++i) c.append_exact(i, &h.k[i * 4], &h.v[i * 4]);
  MetricRow r = h.measure(c);
  // Logits (0 + ln 2, ln 2, ln 4) -> Q = (2, 2, 4)/8 = (1/4, 1/4, 1/2) = slot masses P̄ (1/8+1/8, 1/4, 1/2).
  // o_hat = 1/4 (1/2, 1/2, 0, 0) + (0, 0, 1/4, 1/2) = o.
  CHECK(M(r, Metric::mass) == doctest::Approx(1.0).epsilon(1e-7));
  CHECK(M(r, Metric::out_cos) == doctest::Approx(1.0).epsilon(1e-9));
  CHECK(M(r, Metric::out_rel_l2) < 1e-6);
  CHECK(M(r, Metric::tv) < 1e-7);
  // kl: terms -log(1 - e + e/(4P)): P = 1/4 -> 0 (twice); P = 1/2 -> e/2, weighted 1/2 -> e/4.
  CHECK(M(r, Metric::kl) == doctest::Approx(0.25e-6).epsilon(1e-3));
  CHECK(M(r, Metric::topk8_recall) == 1.0);
  // v_rel_err: v0 - v̂ = (1/2, -1/2, 0, 0), v1 - v̂ = (-1/2, 1/2, 0, 0): sum of squares 1;
  // sum |v_i|^2 over the 4 members = 4 -> sqrt(1/4) = 1/2. Keys 0 and 1 are zero: k_rel_err = 0.
  CHECK(M(r, Metric::v_rel_err) == doctest::Approx(0.5).epsilon(1e-9));
  CHECK(M(r, Metric::k_rel_err) == 0.0);
  // Only unmerged slots (exact here) enter logit_rel_err: 0.
  CHECK(M(r, Metric::logit_rel_err) == 0.0);
}

TEST_CASE("metrics: a dequantized key gives logit and key reconstruction errors") {
  // Two tokens, D = 4, q = (2, 0, 0, 0): k0 = (1, 0, 0, 0) -> z0 = 1; k1 = (2, 0, 0, 0) -> z1 = 2.
  // Slot 1 holds k̂1 = (1.5, 0, 0, 0) (as a quantizer might), so ẑ1 = 1.5.
  float q[4] = {2, 0, 0, 0};
  std::vector<float> k = {1, 0, 0, 0, 2, 0, 0, 0}, v = {1, 0, 0, 0, 0, 1, 0, 0}, kn = {1, 2};
  SlotCache c(4, 2);
  c.append_exact(0, &k[0], &v[0]);
  const float kh[4] = {1.5f, 0, 0, 0};
  c.append(kh, &v[4], 0.0f, {1}, false);
  std::vector<double> logit(2);
  std::vector<float> w(2), oh(4);
  ref::attend_slots(q, 4, 1, 4, c.slots_view(), logit.data(), w.data(), oh.data());
  // Exact P = (e^1, e^2) / (e^1 + e^2); lse = ln(e + e^2) = 2 + ln(1 + 1/e).
  const double lse = 2.0 + std::log(1.0 + std::exp(-1.0));
  const float o[4] = {float(std::exp(1 - lse)), float(std::exp(2 - lse)), 0, 0};
  int32_t top[32];
  std::fill(top, top + 32, -1);
  top[0] = 1, top[1] = 0;
  uint8_t present[2] = {1, 1};
  StepInputs in;
  in.t = 1, in.D = 4, in.q = q, in.o_ref = o, in.lse_ref = lse, in.top_pos = top;
  in.k_orig = k.data(), in.v_orig = v.data(), in.k_norm = kn.data();
  in.cache = &c, in.logit = logit.data(), in.w = w.data(), in.o_hat = oh.data(), in.present = present;
  MetricRow r{};
  measure_step(in, cache_errors(c, k.data(), v.data(), kn.data(), 4), r);
  // logit_rel_err = |(1, 2) - (1, 1.5)| / |(1, 2)| = 0.5 / sqrt(5) = 0.2236068.
  CHECK(r[int(Metric::logit_rel_err)] == doctest::Approx(0.5 / std::sqrt(5.0)).epsilon(1e-7));
  // k_rel_err = sqrt(0.5^2 / (1^2 + 2^2)) = sqrt(0.05) = 0.2236068; values exact: v_rel_err = 0.
  CHECK(r[int(Metric::k_rel_err)] == doctest::Approx(std::sqrt(0.05)).epsilon(1e-7));
  CHECK(r[int(Metric::v_rel_err)] == 0.0);
  // Nothing evicted: mass 1, recall 1.
  CHECK(r[int(Metric::mass)] == doctest::Approx(1.0).epsilon(1e-12));
  CHECK(r[int(Metric::topk8_recall)] == 1.0);
}

TEST_CASE("metrics: bytes and ratio of the identity codec") {
  // fp16 key and value: 2 bytes x 2 tensors x D = 4 -> 16 bytes per slot; 2 slots = 32 bytes.
  // ratio at step t = 3 (4 tokens): 32 / (4 x 2 x 2 x 4) = 0.5 (the engine's ratio = bytes / (4 D (t+1))).
  SlotCache c(4, 2);
  float z[4] = {0, 0, 0, 0};
  c.append_exact(0, z, z);
  c.append_exact(1, z, z);
  CHECK(identity_codec().make_state(4, 4)->bytes(c) == 32.0);
  CHECK(identity_codec().make_state(4, 4)->bytes(c) / (4.0 * 4 * 4) == 0.5);
}

TEST_CASE("metrics: summaries interpolate percentiles and pick the worst by direction") {
  // Sorted (1, 2, 3, 4, 5): p5 at rank 0.05 x 4 = 0.2 -> 1.2; p50 -> 3; p95 at 3.8 -> 4.8; mean 3.
  MetricSummary s = summarize({5, 1, 4, 2, 3}, false);
  CHECK(s.mean == doctest::Approx(3.0));
  CHECK(s.p5 == doctest::Approx(1.2));
  CHECK(s.p50 == doctest::Approx(3.0));
  CHECK(s.p95 == doctest::Approx(4.8));
  CHECK(s.worst == 5.0);
  CHECK(summarize({5, 1, 4, 2, 3}, true).worst == 1.0);
  CHECK(summarize({7}, true).p5 == 7.0);
  CHECK(summarize({}, true).n == 0);
  CHECK(higher_is_better(int(Metric::out_cos)));
  CHECK_FALSE(higher_is_better(int(Metric::kl)));
}

TEST_CASE("metrics: kl of pure eviction equals its closed form in mass and eps (property)") {
  // For pure eviction P̄_s = m Q_s, so kl = m log(m/(1-e)) + (1-m) log((1-m)(n+1)/e) - r with
  // 0 <= r <= m n e / ((n+1)(1-e)) (metrics.h). Random distributions and kept subsets, seeded.
  std::mt19937_64 g(20261122);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (double eps : {1e-6, 1e-3, 1e-2}) {
    for (int trial = 0; trial < 300; ++trial) {
      const int64_t T = 1 + g() % 60;
      std::vector<double> z(T), P(T);
      const double spread = 0.1 + 8.0 * u(g);
      double sum = 0;
      for (auto& x : z) x = spread * (u(g) - 0.5);
      for (int64_t i = 0; i < T; ++i) sum += (P[i] = std::exp(z[i]));
      for (auto& p : P) p /= sum;
      std::vector<double> pbar, q;
      double m = 0;
      for (int64_t i = 0; i < T; ++i)
        if (i == T - 1 || u(g) < 0.5) pbar.push_back(P[i]), m += P[i];
      for (double p : pbar) q.push_back(p / m);
      const int64_t n = static_cast<int64_t>(pbar.size());
      const double kl = kl_bucket(pbar.data(), q.data(), n, m, eps);
      const double closed = kl_pure_eviction(m, eps, n);
      const double rmax = m * n * eps / ((n + 1) * (1 - eps));
      INFO("T=" << T << " n=" << n << " m=" << m << " eps=" << eps << " kl=" << kl << " closed=" << closed);
      CHECK(kl <= closed + 1e-12);
      CHECK(kl >= closed - rmax - 1e-12);
    }
  }
}
