// Helpers shared by the tests/test_sim_*.cpp files: owned layer data behind a LayerView, seeded
// random fills, and a minimal replay loop that records the positions each cache holds per step.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "sim/exact_stats.h"
#include "sim/instance.h"
#include "sim/kernels/kernels.h"
#include "sim/replay.h"
#include "sim/strategies/slot.h"
#include "sim/strategies/strategy.h"

namespace kvsim::test {

struct Layer {
  int64_t H = 1, Hkv = 1, T = 0, D = 4;
  std::vector<float> q, k, v, k_norm, colsums;
  std::vector<float> entropy;  // [H, T] nats, optional (entropy_merge reads it)
  std::vector<float> q_pre;    // [H, T, D], optional (expected_attention reads it)
  std::vector<float> vo_norm;  // [H, T], optional (criticalkv reads it)
  std::vector<float> k_pre;    // [Hkv, T, D], optional (duoattention reads it)
  RopeStyle rope_style = RopeStyle::none;
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
    lv.q_pre = q_pre.empty() ? nullptr : q_pre.data();
    lv.vo_norm = vo_norm.empty() ? nullptr : vo_norm.data();
    lv.k_pre = k_pre.empty() ? nullptr : k_pre.data();
    lv.rope_style = rope_style;
    return lv;
  }
};

// Layer data built to break attention kernels (the backend harness's cases, tests/backend_harness.h).
enum class Data { random, all_equal, huge_negative, sink };

inline void fill(Layer& L, Data d, uint64_t seed) {
  L.fill_random(seed);
  if (d == Data::all_equal) {
    for (auto& x : L.k) x = 0.5f;  // every logit in a row equal: ties everywhere
  } else if (d == Data::huge_negative) {
    for (auto& x : L.q) x *= 300.0f;  // logits of +-1e3..1e4: exp underflows unless max-subtracted
  } else if (d == Data::sink) {
    for (int64_t kv = 0; kv < L.Hkv; ++kv)
      for (int64_t x = 0; x < L.D; ++x) L.K(kv, 0, x) = 40.0f;  // token 0 takes nearly all the mass
    for (auto& x : L.q) x = std::fabs(x);
  }
}

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

// Runs a strategy through prefill and decode on the one instance driver (sim/instance.h) and
// returns the kept position set of every cache after every step: [step][cache].
// `attend` is the compressed attention kernel the decode steps run (kernels(b).attend_slots for a
// backend b, or the harness's host emulation of the CUDA one).
inline std::vector<std::vector<std::set<int32_t>>> kept_sets(const Strategy& s, Layer& L, int64_t P,
                                                             AttendSlotsFn attend, int64_t layer = 0,
                                                             int64_t n_layers = 1) {
  LayerView lv = L.view();
  if (s.needs_prompt_colsums()) {
    ExactStats rs;
    compute_exact_stats(lv, Backend::ref, rs);
    compute_prompt_colsums(lv, rs, P, Backend::ref, L.colsums);
    lv.prompt_colsums = L.colsums.data();
  }
  std::vector<std::vector<std::set<int32_t>>> out(L.T - P + 1, std::vector<std::set<int32_t>>(L.Hkv));
  const ModelShape shape{n_layers, L.H, L.Hkv, L.D};
  for (int64_t i = 0; i < instances_per_layer(s, L.Hkv); ++i) {
    Instance inst(s, make_context(s, shape, layer, i, L.T, P));
    auto record = [&](int64_t step) {
      for (int64_t c = 0; c < inst.n_caches(); ++c) out[step][inst.kv0() + c] = positions(inst.cache(c));
    };
    inst.prefill_from(lv);
    record(0);
    for (int64_t t = P; t < L.T; ++t) {
      inst.step(lv, t, attend, [](const Instance&, int64_t) {});
      record(t - P + 1);
    }
  }
  return out;
}

inline std::vector<std::vector<std::set<int32_t>>> kept_sets(const Strategy& s, Layer& L, int64_t P, Backend b,
                                                             int64_t layer = 0, int64_t n_layers = 1) {
  return kept_sets(s, L, P, kernels(b).attend_slots, layer, n_layers);
}

// kept_sets for a strategy with gqa=none on a layer with one KV head: [step][query head].
inline std::vector<std::vector<std::set<int32_t>>> kept_sets_per_query_head(const Strategy& s, Layer& L, int64_t P,
                                                                            AttendSlotsFn attend) {
  LayerView lv = L.view();
  if (s.needs_prompt_colsums()) {
    ExactStats rs;
    compute_exact_stats(lv, Backend::ref, rs);
    compute_prompt_colsums(lv, rs, P, Backend::ref, L.colsums);
    lv.prompt_colsums = L.colsums.data();
  }
  Instance inst(s, make_context(s, ModelShape{1, L.H, L.Hkv, L.D}, 0, 0, L.T, P));
  std::vector<std::vector<std::set<int32_t>>> out(L.T - P + 1, std::vector<std::set<int32_t>>(inst.n_caches()));
  auto record = [&](int64_t step) {
    for (int64_t c = 0; c < inst.n_caches(); ++c) out[step][c] = positions(inst.cache(c));
  };
  inst.prefill_from(lv);
  record(0);
  for (int64_t t = P; t < L.T; ++t) {
    inst.step(lv, t, attend, [](const Instance&, int64_t) {});
    record(t - P + 1);
  }
  return out;
}

// One instance driven by hand: the caches of the first n_caches KV heads with tokens 0..P-1 stored
// exactly (identity codec), observing weights the test gives.
struct Driver {
  std::unique_ptr<Strategy> strat;
  Layer& L;
  LayerView lv;
  std::unique_ptr<Instance> inst;
  Driver(const std::string& spec, Layer& layer, int64_t P, int64_t layer_index = 0, int64_t n_layers = 1)
      : strat(make_strategy(spec)), L(layer) {
    lv = L.view();
    inst = std::make_unique<Instance>(
        *strat, make_context(*strat, ModelShape{n_layers, L.H, L.Hkv, L.D}, layer_index, 0, L.T, P));
    inst->prefill_from(lv);
  }
  // Observe weights given per cache as position -> weight (same for all G query heads), then evict.
  void step(int64_t t, const std::vector<std::map<int32_t, float>>& w_by_pos) {
    inst->store_from(lv, t);
    std::vector<std::vector<float>> w(inst->n_caches());
    std::vector<const float*> wp;
    for (int64_t c = 0; c < inst->n_caches(); ++c) {
      const auto& m = w_by_pos[c];
      w[c] = weights_by_pos(inst->cache(c), inst->rows(), [&](int64_t, int32_t p) {
        auto it = m.find(p);
        return it == m.end() ? 0.0f : it->second;
      });
      wp.push_back(w[c].data());
    }
    inst->finish_step(t, wp);
  }
  const SlotCache& cache(int64_t c = 0) const { return inst->cache(c); }
  std::set<int32_t> pos(size_t c = 0) const { return positions(inst->cache(static_cast<int64_t>(c))); }
};

inline std::string set_str(const std::set<int32_t>& s) {
  std::ostringstream o;
  o << '{';
  bool first = true;
  for (int32_t p : s) o << (first ? "" : ",") << p, first = false;
  o << '}';
  return o.str();
}

// One layer replayed through `s` under protocol `p` with prefill P on the ref backend, with its
// summaries finalized (the single-layer path of `kvsim run`).
inline ConfigResult replay_one_layer(const LayerView& lv, const ExactStats& rs, const Strategy& s, Protocol p,
                                     int64_t P) {
  ReplayOptions opt;
  opt.backend = Backend::ref, opt.protocol = p;
  std::vector<ConfigResult> res(1);
  res[0].heads.resize(static_cast<size_t>(lv.H));
  const Strategy* list[] = {&s};
  replay_layer(lv, rs, 0, 1, P, list, opt, res);
  finalize_summaries(res[0]);
  return res[0];
}

}  // namespace kvsim::test
