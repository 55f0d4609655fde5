// magicpig (protocol C, sim/strategies/STRATEGIES.md): MagicPIG, LSH sampling for attention (Chen et
// al., "MagicPIG: LSH Sampling for Efficient LLM Generation", arXiv 2410.16179; rule as in the
// reference Infini-AI-Lab/MagicPIG evaluations/RULER/pred/cache_ref.py).
// After prefill, per KV head: the exact set E is the first `sinks` and the last `local` prompt tokens
// (every decode token joins E); the rest M is sampled. Keys of M are centred by their mean μ and hashed
// once by SimHash: L tables of K sign bits of k'·W, W ∈ R^{D×(K·L)} Gaussian. At a decode step each
// query head hashes its query; i ∈ M is sampled iff its code equals the query's in at least 2 of the L
// tables. A sampled token's logit is corrected by -log(w_i + 1e-4), w_i its probability of being
// sampled (u_i = 1 - arccos(cos(q, k'_i))/π, p_i = u_i^K, w_i = 1 - (1-p_i)^L - L p_i (1-p_i)^(L-1)),
// and one softmax runs over E ∪ sampled. Layers in `dense_layers` read every slot.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <numbers>

#include "sim/base/error.h"
#include "sim/base/splitmix.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

// n standard normals from splitmix64 by Box–Muller in double (STRATEGIES.md says how the NumPy check
// reproduces them): per pair, u1, u2 = (draw >> 11) · 2^-53, r = sqrt(-2 ln(1 - u1)),
// z = r cos(2π u2), r sin(2π u2).
std::vector<double> gaussians(uint64_t state, int64_t n) {
  std::vector<double> z(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i += 2) {
    const double u1 = static_cast<double>(splitmix64(state) >> 11) * 0x1.0p-53;
    const double u2 = static_cast<double>(splitmix64(state) >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(1.0 - u1)), a = 2.0 * std::numbers::pi * u2;
    z[i] = r * std::cos(a);
    if (i + 1 < n) z[i + 1] = r * std::sin(a);
  }
  return z;
}

struct MagicPigParams {
  int64_t K = 10, L = 150, sinks = 4, local = 64;
  uint64_t seed = 0;
};

class MagicPigState final : public StrategyState {
 public:
  MagicPigState(const MagicPigParams& mp, const InstanceContext& ctx, bool dense) : mp_(mp), ctx_(ctx), dense_(dense) {
    m0_ = std::min(mp.sinks, ctx.P);  // M = [m0, m1)
    m1_ = std::max(m0_, ctx.P - mp.local);
    if (!dense_ && m1_ == m0_) {
      static std::atomic<bool> said{false};
      if (!said.exchange(true))
        std::fprintf(stderr,
                     "magicpig: sinks + local = %lld >= P = %lld: nothing to sample, every token is read "
                     "(full attention)\n",
                     static_cast<long long>(mp.sinks + mp.local), static_cast<long long>(ctx.P));
    }
  }

  void prefill(std::span<SlotCache> caches, const LayerView&, int64_t) override {
    if (dense_ || m1_ == m0_) return;
    KVSIM_ASSERT(caches.size() == 1);
    const SlotCache& c = caches[0];
    const int64_t D = ctx_.D, KL = mp_.K * mp_.L, n = m1_ - m0_;
    // One W per (block of 16 layers, KV head), as the reference shares it across a block.
    const uint64_t block = static_cast<uint64_t>(ctx_.layer / 16), kv = static_cast<uint64_t>(ctx_.kv0);
    W_ = gaussians(mp_.seed * 0x100000001b3ull ^ (block << 32) ^ kv, D * KL);
    mu_.assign(static_cast<size_t>(D), 0.0);
    for (int64_t s = m0_; s < m1_; ++s)
      for (int64_t x = 0; x < D; ++x) mu_[x] += c.key(s)[x];
    for (double& x : mu_) x /= static_cast<double>(n);
    codes_.resize(static_cast<size_t>(n * mp_.L));
    std::vector<double> kc(static_cast<size_t>(D));
    for (int64_t s = m0_; s < m1_; ++s) {
      for (int64_t x = 0; x < D; ++x) kc[x] = c.key(s)[x] - mu_[x];
      hash(kc.data(), codes_.data() + (s - m0_) * mp_.L);
    }
  }
  void evict(std::span<SlotCache>, int64_t) override {}

  void select(const SlotCache& cache, int64_t, const float* q, int64_t q_stride, int64_t t,
              std::span<Selection> sel) override {
    const int64_t n = cache.size(), D = ctx_.D, L = mp_.L;
    KVSIM_ASSERT(n == t + 1);  // protocol C holds every token, slot s at position s
    std::vector<double> qd(static_cast<size_t>(D)), kc(static_cast<size_t>(D));
    std::vector<uint16_t> qcode(static_cast<size_t>(L));
    for (size_t g = 0; g < sel.size(); ++g) {
      Selection& out = sel[g];
      out.clear();
      if (dense_ || m1_ == m0_) {
        for (int32_t s = 0; s < n; ++s) out.slots.push_back(s);
        continue;
      }
      const float* qg = q + static_cast<int64_t>(g) * q_stride;
      for (int32_t s = 0; s < m0_; ++s) out.slots.push_back(s);
      for (int32_t s = static_cast<int32_t>(m1_); s < n; ++s) out.slots.push_back(s);
      out.bias.assign(out.slots.size(), 0.0f);
      double qn = 0;
      for (int64_t x = 0; x < D; ++x) qd[x] = qg[x], qn += qd[x] * qd[x];
      qn = std::sqrt(qn);
      hash(qd.data(), qcode.data());  // the signs of q·W are those of (q/‖q‖)·W
      for (int64_t i = 0; i < m1_ - m0_; ++i) {
        const uint16_t* kcode = codes_.data() + i * L;
        int64_t hits = 0;
        for (int64_t l = 0; l < L && hits < 2; ++l) hits += kcode[l] == qcode[l];
        if (hits < 2) continue;
        const int32_t s = static_cast<int32_t>(m0_ + i);
        double dot = 0, kn = 0;
        for (int64_t x = 0; x < D; ++x) {
          kc[x] = cache.key(s)[x] - mu_[x];
          dot += qd[x] * kc[x], kn += kc[x] * kc[x];
        }
        const double cosv = qn > 0 && kn > 0 ? std::clamp(dot / (qn * std::sqrt(kn)), -1.0, 1.0) : 0.0;
        const double u = 1.0 - std::acos(cosv) / std::numbers::pi;
        const double p = std::pow(u, static_cast<double>(mp_.K));
        const double w = 1.0 - std::pow(1.0 - p, static_cast<double>(L)) -
                         static_cast<double>(L) * p * std::pow(1.0 - p, static_cast<double>(L - 1));
        out.slots.push_back(s);
        out.bias.push_back(static_cast<float>(-std::log(w + 1e-4)));
      }
    }
  }

  // Held: L int16 codes per sampled-region token and μ (D values in fp16, as the reference keeps it
  // in the model's dtype). W is regenerated from the seed and costs nothing.
  double state_bytes(int64_t) const override {
    if (dense_ || m1_ == m0_) return 0;
    return 2.0 * static_cast<double>(mp_.L * (m1_ - m0_)) + 2.0 * static_cast<double>(ctx_.D);
  }
  // Read per step: every code of M is compared with the query's (once per KV head).
  double metadata_read_bytes(const SlotCache&, int64_t, std::span<const Selection>) const override {
    if (dense_ || m1_ == m0_) return 0;
    return 2.0 * static_cast<double>(mp_.L * (m1_ - m0_));
  }

 private:
  // code[l] = Σ_b [x·W[:, l K + b] > 0] 2^b (bit b of table l), projections in double.
  void hash(const double* x, uint16_t* code) const {
    const int64_t D = ctx_.D, K = mp_.K, KL = K * mp_.L;
    for (int64_t l = 0; l < mp_.L; ++l) {
      uint16_t c = 0;
      for (int64_t b = 0; b < K; ++b) {
        const int64_t j = l * K + b;
        double d = 0;
        for (int64_t y = 0; y < D; ++y) d += x[y] * W_[y * KL + j];
        if (d > 0) c = static_cast<uint16_t>(c | (1u << b));
      }
      code[l] = c;
    }
  }

  MagicPigParams mp_;
  InstanceContext ctx_;
  bool dense_;
  int64_t m0_ = 0, m1_ = 0;
  std::vector<double> W_;  // [D, K·L]
  std::vector<double> mu_;
  std::vector<uint16_t> codes_;  // [m1 - m0, L]
};

// Tables at most: W [D, K·L] is built per (layer, KV head), so L bounds its memory (D·16·L doubles).
constexpr int64_t kMaxTables = 4096;

class MagicPig final : public Strategy {
 public:
  explicit MagicPig(ParamReader& p) {
    const std::string& spec = p.spec().text;
    mp_.K = p.get_int("K", 10);
    mp_.L = p.get_int("L", 150, IntRange{0, kMaxTables});  // W holds D·K·L doubles
    mp_.sinks = p.get_int("sinks", 4);
    mp_.local = p.get_int("local", 64);
    mp_.seed = p.get_seed("seed");
    explicit_dense_ = p.has("dense_layers");
    dense_ = p.get_int_list("dense_layers", {0, 16, 32, 48, 64});
    if (mp_.K < 1 || mp_.K > 16)
      throw UsageError("strategy '" + spec + "': K=" + std::to_string(mp_.K) +
                       " must be in [1, 16] (each table's K bits are one 16-bit code)");
    if (mp_.L < 2)
      throw UsageError("strategy '" + spec + "': L=" + std::to_string(mp_.L) +
                       " must be >= 2 (a token is sampled when 2 of the L tables match)");
    if (mp_.sinks < 0 || mp_.local < 0)
      throw UsageError("strategy '" + spec + "': sinks=" + std::to_string(mp_.sinks) +
                       " and local=" + std::to_string(mp_.local) + " must be >= 0");
    for (int64_t l : dense_)
      if (l < 0) throw UsageError("strategy '" + spec + "': dense_layers holds " + std::to_string(l) + " (< 0)");
    set_identity(p);
  }
  bool is_selector() const override { return true; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    if (explicit_dense_)
      for (int64_t l : dense_)
        if (l >= ctx.n_layers)
          throw UsageError("strategy '" + spec_text_ + "': dense_layers holds layer " + std::to_string(l) +
                           " but the trace has L = " + std::to_string(ctx.n_layers) + " layers");
    const bool dense = std::find(dense_.begin(), dense_.end(), ctx.layer) != dense_.end();
    return std::make_unique<MagicPigState>(mp_, ctx, dense);
  }

 private:
  MagicPigParams mp_;
  std::vector<int64_t> dense_;
  bool explicit_dense_ = false;
};

}  // namespace

std::unique_ptr<Strategy> make_magicpig(ParamReader& p) { return std::make_unique<MagicPig>(p); }

}  // namespace kvsim
