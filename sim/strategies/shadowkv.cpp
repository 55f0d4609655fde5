// shadowkv (Sun et al., arXiv 2410.21465; rule checked against bytedance/ShadowKV models/kv_cache.py
// ShadowKVCache and models/base.py): one instance per layer (the SVD couples the KV heads).
// Prefill, once: the pre-RoPE prompt keys of all Hkv heads side by side, A [P, Hkv·D], are replaced
// by their rank-`rank` SVD U_r Σ_r V_rᵀ (kept as U_r, shared by the heads, and (Σ V_rᵀ)_h per head).
// The first n_c = ⌊P/chunk⌋ − local chunks of `chunk` tokens form the sparse region; the rest of
// the prompt (the last `local` chunks and P mod chunk tokens) stays exact. Per head, a chunk's
// landmark is the mean of its post-RoPE keys; the `outliers` chunks whose keys have the lowest
// min cos to their landmark stay exact; the others are landmarks (ties: the lower chunk).
// Decode, per KV head: a_j = max_g softmax_j(q_g·landmark_j/√D) over the landmarks; the top
// ⌊budget/chunk⌋ chunks (ties: the lower chunk) are read with keys rebuilt as
// RoPE_pos(U_r[pos]·(ΣVᵀ)_h) and exact values, together with the local and outlier tokens and
// every decode token (exact). The rebuilt keys live in a slot-aligned copy of the cache
// (Selection::from), marked inexact so that mass is measured with the true keys.
// The SVD: the eigenvectors V_r of AᵀA (Jacobi, double; sim/base/sym_eigen.h), rebuilt rows
// A_i V_r V_rᵀ = U_r Σ_r V_rᵀ row i (sign-free). Factors are kept in float, not bf16.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "sim/base/sym_eigen.h"
#include "sim/strategies/evict.h"
#include "sim/strategies/registry.h"

namespace kvsim {

namespace {

struct ShadowParams {
  int64_t budget = 2048, rank = 160, chunk = 8, outliers = 48, local = 4;
};

class ShadowkvState final : public StrategyState {
 public:
  ShadowkvState(const ShadowParams& sp, const InstanceContext& ctx)
      : sp_(sp), Hkv_(ctx.n_caches), D_(ctx.D), P_(ctx.P), n_c_(ctx.P / sp.chunk - sp.local) {}

  void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) override {
    KVSIM_ASSERT(lv.k_pre && P == P_ && static_cast<int64_t>(caches.size()) == Hkv_);
    const int64_t HD = Hkv_ * D_, r = sp_.rank, region = n_c_ * sp_.chunk;
    // V_r: the top-r eigenvectors of AᵀA.
    std::vector<double> ata(static_cast<size_t>(HD * HD), 0.0), row(static_cast<size_t>(HD));
    for (int64_t i = 0; i < P; ++i) {
      for (int64_t h = 0; h < Hkv_; ++h)
        for (int64_t x = 0; x < D_; ++x) row[h * D_ + x] = lv.k_pre_head(h)[i * D_ + x];
      for (int64_t a = 0; a < HD; ++a)
        for (int64_t b = 0; b < HD; ++b) ata[a * HD + b] += row[a] * row[b];
    }
    std::vector<double> w, v;
    sym_eigen(ata, HD, w, v);
    // Rebuilt post-RoPE keys of the sparse region, per head: rebuilt_[h][i * D + x].
    rebuilt_.assign(static_cast<size_t>(Hkv_), std::vector<float>(static_cast<size_t>(region * D_)));
    std::vector<double> y(static_cast<size_t>(r));
    for (int64_t i = 0; i < region; ++i) {
      for (int64_t h = 0; h < Hkv_; ++h)
        for (int64_t x = 0; x < D_; ++x) row[h * D_ + x] = lv.k_pre_head(h)[i * D_ + x];
      for (int64_t j = 0; j < r; ++j) {
        double d = 0;
        for (int64_t a = 0; a < HD; ++a) d += row[a] * v[a * HD + j];
        y[j] = d;
      }
      for (int64_t h = 0; h < Hkv_; ++h) {
        float* out = rebuilt_[h].data() + i * D_;
        for (int64_t x = 0; x < D_; ++x) {
          double d = 0;
          for (int64_t j = 0; j < r; ++j) d += y[j] * v[(h * D_ + x) * HD + j];
          out[x] = static_cast<float>(d);
        }
        apply_rope(out, 1, D_, i, lv.rope_theta, lv.rope_style);
      }
    }
    landmark_.assign(static_cast<size_t>(Hkv_), {});
    chunk_of_.assign(static_cast<size_t>(Hkv_), {});
    exact_pos_.assign(static_cast<size_t>(Hkv_), {});
    from_.assign(static_cast<size_t>(Hkv_), SlotCache{});
    for (int64_t h = 0; h < Hkv_; ++h) prefill_head(caches[h], lv, h);
  }
  void evict(std::span<SlotCache>, int64_t) override {}

  void select(const SlotCache& cache, int64_t c, const float* q, int64_t q_stride, int64_t t,
              std::span<Selection> sel) override {
    SlotCache& from = from_[c];
    for (int64_t s = from.size(); s < cache.size(); ++s) {  // decode tokens, exact, slot s = position s
      KVSIM_ASSERT(cache.pos(s) == s);
      from.append_exact(cache.pos(s), cache.key(s), cache.value(s));
    }
    const int64_t n_lm = static_cast<int64_t>(chunk_of_[c].size()), G = static_cast<int64_t>(sel.size());
    const double scale = 1.0 / std::sqrt(static_cast<double>(D_));
    std::vector<double> a(static_cast<size_t>(n_lm), 0.0), z(static_cast<size_t>(n_lm));
    for (int64_t g = 0; g < G; ++g) {
      double zmax = -INFINITY, den = 0;
      for (int64_t j = 0; j < n_lm; ++j) {
        double d = 0;
        for (int64_t x = 0; x < D_; ++x) d += q[g * q_stride + x] * landmark_[c][j * D_ + x];
        z[j] = d * scale, zmax = std::max(zmax, z[j]);
      }
      for (int64_t j = 0; j < n_lm; ++j) den += std::exp(z[j] - zmax);
      for (int64_t j = 0; j < n_lm; ++j) a[j] = std::max(a[j], std::exp(z[j] - zmax) / den);
    }
    std::vector<int32_t> top(static_cast<size_t>(n_lm));
    std::iota(top.begin(), top.end(), 0);
    const int64_t k = sp_.budget / sp_.chunk;
    std::partial_sort(top.begin(), top.begin() + k, top.end(),
                      [&](int32_t i, int32_t j) { return keep_before(a[i], chunk_of_[c][i], a[j], chunk_of_[c][j]); });
    top.resize(static_cast<size_t>(k));
    std::sort(top.begin(), top.end());
    for (Selection& s : sel) {
      s.clear();
      s.slots = exact_pos_[c];
      for (int64_t p = P_; p <= t; ++p) s.slots.push_back(static_cast<int32_t>(p));
      s.loaded = static_cast<int64_t>(s.slots.size());
      for (int32_t j : top)
        for (int64_t x = 0; x < sp_.chunk; ++x)
          s.slots.push_back(static_cast<int32_t>(chunk_of_[c][j] * sp_.chunk + x));
      s.from = &from;
    }
  }

  // Held beyond the cache's fp16 K and V of every token: U_r (2 P r bytes per layer, a 1/Hkv
  // share per head), (ΣVᵀ)_h (2 r D), the landmarks (2 D each) and their chunk indices (4 each),
  // less the fp16 keys of the landmark chunks, which only the factors hold.
  double state_bytes(int64_t c) const override {
    const double n_lm = static_cast<double>(chunk_of_.empty() ? 0 : chunk_of_[c].size());
    const double r = static_cast<double>(sp_.rank), D = static_cast<double>(D_);
    return 2.0 * static_cast<double>(P_) * r / static_cast<double>(Hkv_) + 2.0 * r * D + (2.0 * D + 4.0) * n_lm -
           2.0 * D * static_cast<double>(sp_.chunk) * n_lm;
  }
  // A step reads the landmarks and their indices, (ΣVᵀ)_h, and per selected token its U_r row
  // (2 r) and its value (2 D); the exact tokens are the loaded prefix of the selection.
  double metadata_read_bytes(const SlotCache&, int64_t c, std::span<const Selection>) const override {
    const double n_lm = static_cast<double>(chunk_of_[c].size()), r = static_cast<double>(sp_.rank);
    const double D = static_cast<double>(D_), n_tok = static_cast<double>(sp_.budget / sp_.chunk * sp_.chunk);
    return (2.0 * D + 4.0) * n_lm + 2.0 * r * D + n_tok * (2.0 * r + 2.0 * D);
  }

 private:
  void prefill_head(const SlotCache& cache, const LayerView& lv, int64_t h) {
    const int64_t m = sp_.chunk;
    const float* k = lv.k_head(h);
    std::vector<double> lm(static_cast<size_t>(n_c_ * D_), 0.0), min_cos(static_cast<size_t>(n_c_));
    for (int64_t j = 0; j < n_c_; ++j) {
      double* l = lm.data() + j * D_;
      for (int64_t i = j * m; i < (j + 1) * m; ++i)
        for (int64_t x = 0; x < D_; ++x) l[x] += k[i * D_ + x];
      double nl = 0;
      for (int64_t x = 0; x < D_; ++x) l[x] /= static_cast<double>(m), nl += l[x] * l[x];
      min_cos[j] = INFINITY;
      for (int64_t i = j * m; i < (j + 1) * m; ++i) {
        double d = 0, nk = 0;
        for (int64_t x = 0; x < D_; ++x) d += l[x] * k[i * D_ + x], nk += double(k[i * D_ + x]) * k[i * D_ + x];
        min_cos[j] = std::min(min_cos[j], d / (std::max(std::sqrt(nl), 1e-8) * std::max(std::sqrt(nk), 1e-8)));
      }
    }
    std::vector<int32_t> order(static_cast<size_t>(n_c_));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return min_cos[a] < min_cos[b]; });
    std::vector<uint8_t> outlier(static_cast<size_t>(n_c_), 0);
    for (int64_t i = 0; i < sp_.outliers; ++i) outlier[order[i]] = 1;
    SlotCache& from = from_[h];
    std::vector<int32_t> all(static_cast<size_t>(cache.size()));
    std::iota(all.begin(), all.end(), 0);
    from.assign_subset(cache, all.data(), cache.size());
    for (int64_t s = 0; s < cache.size(); ++s) KVSIM_ASSERT(cache.pos(s) == s);
    for (int64_t j = 0; j < n_c_; ++j) {
      if (outlier[j]) {
        for (int64_t i = j * m; i < (j + 1) * m; ++i) exact_pos_[h].push_back(static_cast<int32_t>(i));
        continue;
      }
      chunk_of_[h].push_back(static_cast<int32_t>(j));
      for (int64_t x = 0; x < D_; ++x) landmark_[h].push_back(lm[j * D_ + x]);
      for (int64_t i = j * m; i < (j + 1) * m; ++i) {
        std::copy_n(rebuilt_[h].data() + i * D_, D_, from.key(i));
        from.set_exact(i, false);
      }
    }
    for (int64_t i = n_c_ * m; i < P_; ++i) exact_pos_[h].push_back(static_cast<int32_t>(i));
  }

  ShadowParams sp_;
  int64_t Hkv_, D_, P_, n_c_;
  std::vector<std::vector<float>> rebuilt_;      // [Hkv][n_c chunk, D] rebuilt post-RoPE keys
  std::vector<std::vector<double>> landmark_;    // [Hkv][n_lm, D]
  std::vector<std::vector<int32_t>> chunk_of_;   // [Hkv][n_lm] chunk index of each landmark
  std::vector<std::vector<int32_t>> exact_pos_;  // [Hkv] outlier and local prompt positions, ascending
  std::vector<SlotCache> from_;                  // [Hkv] the cache with the landmark chunks' keys rebuilt
};

class Shadowkv final : public Strategy {
 public:
  explicit Shadowkv(ParamReader& p) {
    sp_.budget = p.get_int("budget", 2048, "tokens of the selected chunks read per step");
    sp_.rank = p.get_int("rank", 160, "rank of the pre-RoPE key SVD");
    sp_.chunk = p.get_int("chunk", 8, "tokens per chunk");
    sp_.outliers = p.get_int("outliers", 48, "outlier chunks kept exact");
    sp_.local = p.get_int("local", 4, "last prompt chunks kept exact");
    const std::string& t = p.spec().text;
    auto need = [&](bool ok, const std::string& what) {
      if (!ok) throw UsageError("strategy '" + t + "': " + what);
    };
    need(sp_.chunk >= 1, "chunk = " + std::to_string(sp_.chunk) + " must be >= 1");
    need(sp_.budget >= sp_.chunk && sp_.budget % sp_.chunk == 0,
         "budget = " + std::to_string(sp_.budget) +
             " must be a positive multiple of chunk = " + std::to_string(sp_.chunk));
    need(sp_.rank >= 1, "rank = " + std::to_string(sp_.rank) + " must be >= 1");
    need(sp_.outliers >= 0 && sp_.local >= 0, "outliers and local must be >= 0");
    set_identity(p);
  }
  bool is_selector() const override { return true; }
  bool layer_coupled() const override { return true; }
  bool needs_pre_rope() const override { return true; }
  bool takes_codec() const override { return false; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    const std::string where = "strategy '" + spec_text_ + "' (P = " + std::to_string(ctx.P) + ")";
    const int64_t HD = ctx.n_caches * ctx.D;
    if (sp_.rank > std::min(ctx.P, HD))
      throw UsageError(where + ": rank = " + std::to_string(sp_.rank) +
                       " exceeds min(P, Hkv·D) = " + std::to_string(std::min(ctx.P, HD)) + hint());
    const int64_t n_c = ctx.P / sp_.chunk - sp_.local, k = sp_.budget / sp_.chunk;
    if (n_c - sp_.outliers < k)
      throw UsageError(where + ": n_c = P/chunk - local = " + std::to_string(n_c) +
                       " chunks leave fewer than budget/chunk = " + std::to_string(k) +
                       " landmarks after outliers = " + std::to_string(sp_.outliers) + hint());
    return std::make_unique<ShadowkvState>(sp_, ctx);
  }

 private:
  static std::string hint() {
    return "; the defaults assume a prompt of P > 4096 tokens: on short prompts pass scaled parameters, e.g. "
           "shadowkv:budget=16,rank=8,chunk=4,outliers=2,local=1";
  }
  ShadowParams sp_;
};

}  // namespace

std::unique_ptr<Strategy> make_shadowkv(ParamReader& p) { return std::make_unique<Shadowkv>(p); }

}  // namespace kvsim
