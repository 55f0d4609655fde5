// Helpers shared by the tests/test_sim_*.cpp files: owned layer data behind a LayerView, seeded
// random fills, and a minimal replay loop that records the positions each cache holds per step.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <map>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/attend.h"
#include "sim/omp/attend.h"
#include "sim/ref/attend.h"
#include "sim/ref_stats.h"
#include "sim/slot.h"
#include "sim/strategy.h"

namespace kvsim::test {

struct Layer {
  int64_t H = 1, Hkv = 1, T = 0, D = 4;
  std::vector<float> q, k, v, k_norm, colsums;
  std::vector<float> entropy;  // [H, T] nats, optional (entropy_merge reads it)
  Layer(int64_t H_, int64_t Hkv_, int64_t T_, int64_t D_)
      : H(H_), Hkv(Hkv_), T(T_), D(D_), q(H_ * T_ * D_, 0.0f), k(Hkv_ * T_ * D_, 0.0f), v(Hkv_ * T_ * D_, 0.0f),
        k_norm(Hkv_ * T_, 0.0f) {}
  float& Q(int64_t h, int64_t t, int64_t x) { return q[(h * T + t) * D + x]; }
  float& K(int64_t kv, int64_t t, int64_t x) { return k[(kv * T + t) * D + x]; }
  float& V(int64_t kv, int64_t t, int64_t x) { return v[(kv * T + t) * D + x]; }
  void fill_random(uint64_t seed, float scale = 1.0f) {
    std::mt19937_64 g(seed);
    std::normal_distribution<float> n(0.0f, scale);
    for (auto* a : {&q, &k, &v})
      for (auto& x : *a) x = n(g);
  }
  void update_norms() {
    for (int64_t i = 0; i < Hkv * T; ++i) {
      double s = 0;
      for (int64_t x = 0; x < D; ++x) s += double(k[i * D + x]) * k[i * D + x];
      k_norm[i] = float(std::sqrt(s));
    }
  }
  LayerView view() {
    update_norms();
    LayerView lv;
    lv.H = H, lv.Hkv = Hkv, lv.T = T, lv.D = D;
    lv.q = q.data(), lv.k = k.data(), lv.v = v.data(), lv.k_norm = k_norm.data();
    lv.prompt_colsums = colsums.empty() ? nullptr : colsums.data();
    lv.entropy = entropy.empty() ? nullptr : entropy.data();
    return lv;
  }
};

inline std::set<int32_t> positions(const SlotCache& c) {
  std::set<int32_t> s;
  for (int64_t i = 0; i < c.size(); ++i) s.insert(c.pos(i));
  return s;
}

// Attention weights [G, n] for the cache's current slot order from a position -> weight function.
template <class F>
std::vector<float> weights_by_pos(const SlotCache& c, int64_t G, F f) {
  std::vector<float> w(G * c.size());
  for (int64_t g = 0; g < G; ++g)
    for (int64_t s = 0; s < c.size(); ++s) w[g * c.size() + s] = f(g, c.pos(s));
  return w;
}

// Runs a strategy through prefill and decode like the engine (append, attend, observe, evict) and
// returns the kept position set of every cache after every step: [step][cache].
inline std::vector<std::vector<std::set<int32_t>>> kept_sets(const Strategy& s, Layer& L, int64_t P, Backend b,
                                                              int64_t layer = 0, int64_t n_layers = 1) {
  LayerView lv = L.view();
  if (s.needs_prompt_colsums()) {
    RefStats rs;
    compute_ref_stats(lv, Backend::ref, rs);
    compute_prompt_colsums(lv, rs, P, Backend::ref, L.colsums);
    lv.prompt_colsums = L.colsums.data();
  }
  std::vector<std::vector<std::set<int32_t>>> out;
  const int64_t G = L.H / L.Hkv, D = L.D;
  const int64_t n_inst = s.layer_coupled() ? 1 : L.Hkv;
  out.resize(L.T - P + 1, std::vector<std::set<int32_t>>(L.Hkv));
  for (int64_t i = 0; i < n_inst; ++i) {
    InstanceContext ctx;
    ctx.layer = layer, ctx.n_layers = n_layers, ctx.kv0 = s.layer_coupled() ? 0 : i;
    ctx.n_caches = s.layer_coupled() ? L.Hkv : 1;
    ctx.T = L.T, ctx.P = P, ctx.D = D, ctx.G = G;
    auto st = s.make_state(ctx);
    std::vector<SlotCache> caches;
    std::vector<std::unique_ptr<CodecState>> codec;
    for (int64_t c = 0; c < ctx.n_caches; ++c) {
      caches.emplace_back(D, P + 1);
      codec.push_back(s.codec().make_state(D, L.T));
      for (int64_t t = 0; t < P; ++t)
        codec[c]->store(caches[c], int32_t(t), lv.k_head(ctx.kv0 + c) + t * D, lv.v_head(ctx.kv0 + c) + t * D);
    }
    st->prefill(caches, lv, P);
    for (int64_t c = 0; c < ctx.n_caches; ++c) out[0][ctx.kv0 + c] = positions(caches[c]);
    for (int64_t t = P; t < L.T; ++t) {
      std::vector<std::vector<double>> lg(ctx.n_caches);
      std::vector<std::vector<float>> w(ctx.n_caches), oh(ctx.n_caches, std::vector<float>(G * D));
      std::vector<const float*> wp(ctx.n_caches);
      for (int64_t c = 0; c < ctx.n_caches; ++c) {
        const int64_t kv = ctx.kv0 + c;
        codec[c]->store(caches[c], int32_t(t), lv.k_head(kv) + t * D, lv.v_head(kv) + t * D);
        const int64_t n = caches[c].size();
        lg[c].resize(G * n), w[c].resize(G * n);
        auto fn = b == Backend::cuda ? &cuda::attend_slots : b == Backend::omp ? &omp::attend_slots : &ref::attend_slots;
        fn(lv.q_head(kv * G) + t * D, L.T * D, G, D, caches[c].keys(), caches[c].values(), caches[c].biases(), n,
           lg[c].data(), w[c].data(), oh[c].data(), caches[c].views(), caches[c].n_views());
        wp[c] = w[c].data();
      }
      st->observe(std::span<const SlotCache>(caches.data(), caches.size()), wp, t);
      st->evict(caches, t);
      for (int64_t c = 0; c < ctx.n_caches; ++c) out[t - P + 1][ctx.kv0 + c] = positions(caches[c]);
    }
  }
  return out;
}

// One instance driven by hand: caches of the first `n_caches` KV heads, tokens 0..P-1 stored.
struct Driver {
  std::unique_ptr<Strategy> strat;
  std::unique_ptr<StrategyState> st;
  std::vector<SlotCache> caches;
  Layer& L;
  LayerView lv;
  Driver(const std::string& spec, Layer& layer, int64_t P, int64_t layer_index = 0, int64_t n_layers = 1)
      : strat(make_strategy(spec)), L(layer) {
    lv = L.view();
    InstanceContext ctx;
    ctx.layer = layer_index, ctx.n_layers = n_layers, ctx.T = L.T, ctx.P = P, ctx.D = L.D, ctx.G = L.H / L.Hkv;
    ctx.n_caches = strat->layer_coupled() ? L.Hkv : 1;
    st = strat->make_state(ctx);
    for (int64_t c = 0; c < ctx.n_caches; ++c) {
      caches.emplace_back(L.D, P + 1);
      for (int64_t t = 0; t < P; ++t) caches[c].append_exact(int32_t(t), lv.k_head(c) + t * L.D, lv.v_head(c) + t * L.D);
    }
    st->prefill(caches, lv, P);
  }
  void append(int64_t t) {
    for (size_t c = 0; c < caches.size(); ++c)
      caches[c].append_exact(int32_t(t), lv.k_head(c) + t * L.D, lv.v_head(c) + t * L.D);
  }
  // Observe weights given per cache as position -> weight (same for all G query heads), then evict.
  void step(int64_t t, const std::vector<std::map<int32_t, float>>& w_by_pos) {
    append(t);
    std::vector<std::vector<float>> w(caches.size());
    std::vector<const float*> wp;
    for (size_t c = 0; c < caches.size(); ++c) {
      const auto& m = w_by_pos[c];
      w[c] = weights_by_pos(caches[c], L.H / L.Hkv, [&](int64_t, int32_t p) {
        auto it = m.find(p);
        return it == m.end() ? 0.0f : it->second;
      });
      wp.push_back(w[c].data());
    }
    st->observe(std::span<const SlotCache>(caches.data(), caches.size()), wp, t);
    st->evict(caches, t);
  }
  std::set<int32_t> pos(size_t c = 0) const { return positions(caches[c]); }
};


inline std::string set_str(const std::set<int32_t>& s) {
  std::ostringstream o;
  o << '{';
  bool first = true;
  for (int32_t p : s) o << (first ? "" : ",") << p, first = false;
  o << '}';
  return o.str();
}

}  // namespace kvsim::test
