// The one instance driver (sim/instance.h) behind its two callers: the offline replay (replay_layer)
// and the live model runner's strategy cache (traces/model/strategy_cache.h, driven here through
// the KvCache calls a Runner makes: the prompt in one call, then one token per call, every KV head
// of the layer before end_step). Fed the same q, k, v, both must hold the same slots and compute
// the same attention weights at every decode step, bit for bit: the claim that offline metrics
// predict live perplexity rests on it.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "sim/exact_stats.h"
#include "sim/instance.h"
#include "sim/replay.h"
#include "sim_test_util.h"
#include "trace_helpers.h"
#include "traces/model/strategy_cache.h"

using namespace kvsim;
using kvsim::test::Layer;

namespace {

// What one cache of one instance holds and attends with at one step.
struct StepRecord {
  std::vector<std::vector<int32_t>> members;  // per slot, in slot order
  std::vector<float> w;                       // [G, n]
  std::vector<double> logit;                  // [G, n]
  double bytes = 0;
};
using Key = std::tuple<int64_t, int64_t, int64_t>;  // layer, KV head, step
using Log = std::map<Key, StepRecord>;

void record(Log& log, int64_t layer, const Instance& inst, int64_t t) {
  const int64_t G = inst.context().G;
  for (int64_t c = 0; c < inst.n_caches(); ++c) {
    const SlotCache& sc = inst.cache(c);
    StepRecord r;
    for (int64_t s = 0; s < sc.size(); ++s) {
      r.members.emplace_back();
      for (int64_t j = 0; j < sc.n_members(s); ++j) r.members.back().push_back(sc.member(s, j));
    }
    r.w.assign(inst.weights(c), inst.weights(c) + G * sc.size());
    r.logit.assign(inst.logit(c, 0), inst.logit(c, 0) + G * sc.size());
    r.bytes = inst.bytes(c);
    log[Key{layer, inst.kv0() + c, t}] = std::move(r);
  }
}

Log offline(const Strategy& s, Layer& L, int64_t P) {
  LayerView lv = L.view();
  ExactStats rs;
  compute_exact_stats(lv, Backend::ref, rs);
  lv.entropy = rs.entropy.data();
  std::vector<float> colsums;
  compute_prompt_colsums(lv, rs, P, Backend::ref, colsums);
  lv.prompt_colsums = colsums.data();
  Log log;
  ReplayOptions opt;
  opt.backend = Backend::ref;  // serial: the hook needs no lock
  opt.on_step = [&](int64_t layer, const Instance& inst, int64_t t) { record(log, layer, inst, t); };
  std::vector<ConfigResult> results(1);
  results[0].heads.resize(L.H);
  const Strategy* list[] = {&s};
  replay_layer(lv, rs, 0, 1, P, list, opt, results);
  return log;
}

// `weights`: a one-layer model whose o_proj the live cache computes vo_norm from (criticalkv).
Log live(const Strategy& s, Layer& L, int64_t P, const model::Model* weights = nullptr) {
  model::ModelConfig c;
  if (weights) c = weights->config;
  c.n_layers = 1, c.n_heads = L.H, c.n_kv_heads = L.Hkv, c.head_dim = L.D;
  model::StrategyCaches caches(s, c, L.T, P, Backend::ref, Protocol::evict, weights);
  Log log;
  caches.set_step_hook([&](int64_t layer, const Instance& inst, int64_t t) { record(log, layer, inst, t); });
  auto factory = caches.factory();
  std::vector<std::unique_ptr<KvCache>> kv;
  for (int64_t h = 0; h < L.Hkv; ++h) kv.push_back(factory(0, h, L.D, L.T));
  const int64_t G = L.H / L.Hkv, D = L.D;
  // The runner's layout: the queries of a forward call are [T, H, D]; KV head h gets rows h * G ..
  std::vector<float> q(static_cast<size_t>(L.T * L.H * D));
  for (int64_t h = 0; h < L.H; ++h)
    for (int64_t t = 0; t < L.T; ++t)
      for (int64_t x = 0; x < D; ++x) q[(t * L.H + h) * D + x] = L.Q(h, t, x);
  std::vector<float> o(static_cast<size_t>(L.T * L.H * D));
  for (int64_t h = 0; h < L.Hkv; ++h) {  // prompt: one call, attention over the exact view
    kv[h]->append(&L.K(h, 0, 0), &L.V(h, 0, 0), P, 0);
    CHECK_FALSE(kv[h]->attend(q.data() + h * G * D, L.H * D, P, G, 0, o.data()));
  }
  for (int64_t h = 0; h < L.Hkv; ++h) kv[h]->end_step();
  for (int64_t t = P; t < L.T; ++t) {
    for (int64_t h = 0; h < L.Hkv; ++h) {
      kv[h]->append(&L.K(h, t, 0), &L.V(h, t, 0), 1, t);
      REQUIRE(kv[h]->attend(q.data() + (t * L.H + h * G) * D, L.H * D, 1, G, t, o.data() + (t * L.H + h * G) * D));
    }
    for (int64_t h = 0; h < L.Hkv; ++h) kv[h]->end_step();
  }
  return log;
}

void check_same(const std::string& spec, int64_t H, int64_t Hkv, int64_t T, int64_t D, int64_t P, uint64_t seed) {
  auto s = make_strategy(spec);
  Layer L(H, Hkv, T, D);
  L.fill_random(seed, 1.5f);
  model::Model m;  // a strategy that needs_vo_norm: a random o_proj [dim, H*D], the trace's vo_norm from it
  if (s->needs_vo_norm()) {
    const int64_t dim = 12, G = H / Hkv;
    m.config.dim = dim;
    m.layers.resize(1);
    std::vector<float>& wo = m.layers[0].wo;
    for (int64_t i = 0; i < dim * H * D; ++i) wo.push_back(static_cast<float>((i * 7919 % 23) - 11) / 8.0f);
    L.vo_norm.assign(static_cast<size_t>(H * T), 0.0f);
    for (int64_t h = 0; h < H; ++h)  // n[h, i] = sum_r |sum_x wo[r, h D + x] v[h / G, i, x]| (plain loops)
      for (int64_t i = 0; i < T; ++i) {
        double n = 0;
        for (int64_t r = 0; r < dim; ++r) {
          double y = 0;
          for (int64_t x = 0; x < D; ++x) y += double(wo[r * H * D + h * D + x]) * L.V(h / G, i, x);
          n += std::abs(y);
        }
        L.vo_norm[h * T + i] = static_cast<float>(n);
      }
  }
  const Log a = offline(*s, L, P), b = live(*s, L, P, s->needs_vo_norm() ? &m : nullptr);
  INFO(spec << " H " << H << " Hkv " << Hkv << " T " << T << " P " << P << " seed " << seed);
  REQUIRE(a.size() == static_cast<size_t>(Hkv * (T - P)));  // every (KV head, decode step) seen
  REQUIRE(b.size() == a.size());
  int64_t compared = 0;
  for (const auto& [key, ra] : a) {
    const auto it = b.find(key);
    REQUIRE(it != b.end());
    const StepRecord& rb = it->second;
    INFO("KV head " << std::get<1>(key) << " step " << std::get<2>(key));
    CHECK(ra.members == rb.members);
    CHECK(ra.w == rb.w);
    CHECK(ra.logit == rb.logit);
    CHECK(ra.bytes == rb.bytes);
    compared += static_cast<int64_t>(ra.w.size());
  }
  CHECK(compared > 0);
}

}  // namespace

TEST_CASE("instance: offline replay and the live strategy cache hold the same slots and weights at every step") {
  // Eviction of every kind (per head, layer-coupled, prompt-scored, per-layer budgets, random),
  // merging, sketches and codecs: T = 49 (off a power of two), P = 9, budget 16 < T - P.
  for (const char* spec :
       {"full", "window:budget=16", "streaming:budget=16", "h2o:budget=16", "h2o:budget=16,norm=mean,gqa=max",
        "tova:budget=16", "scissorhands:budget=16", "snapkv:budget=16,window=4", "pyramidkv:budget=16,window=4",
        "knorm:budget=16", "random:budget=16,seed=5", "cam:budget=16", "kvmerger:budget=16", "cms_topk:budget=16",
        "cms_aggregate:budget=16", "full+kivi:bits=2,group=8,residual=8", "h2o:budget=16+nf4:dq=1",
        "tova:budget=16+quant:bits=4,group=8"}) {
    SUBCASE(spec) { check_same(spec, 4, 2, 49, 8, 9, 1234); }
  }
}

TEST_CASE("instance: offline and live agree for entropy_merge, whose decode entropies the live cache computes itself") {
  // The offline replay reads each token's row entropy from the exact statistics; the live cache
  // computes it from the live query over the live keys. Same data, so the same merges.
  check_same("entropy_merge:budget=16,threshold=0.4", 4, 2, 49, 8, 9, 77);
}

TEST_CASE("instance: offline and live agree for rkv, whose decode queries the live cache keeps") {
  // rkv scores with the queries of its newest window tokens: the offline replay reads them from the
  // trace, the live cache keeps each decode query as it attends (Strategy::needs_queries). P = 9 < B:
  // the prompt stays and the cache grows to B + buffer before each compaction; then P = 9 >= B = 8: cut
  // at prefill too.
  check_same("rkv:budget=16,window=4,buffer=5", 4, 2, 49, 8, 9, 91);
  check_same("rkv:budget=8,window=4,buffer=3,lambda=0.5,order=position", 4, 2, 49, 8, 9, 92);
}

TEST_CASE("instance: offline and live agree for criticalkv, whose vo_norm the live cache computes from o_proj") {
  // Offline, the trace's vo_norm (here the test's plain loops over a random o_proj); live, the cache's
  // own at prefill from the same o_proj (traces/model/vo_norm.h). Equal to float rounding, so the same
  // cut: uniform heads and AdaKV's budgets, under evict (the allocators' slide afterwards).
  check_same("criticalkv.snapkv:budget=16,window=4", 4, 2, 49, 8, 20, 31);
  check_same("criticalkv.h2o:budget=16,heads=adakv", 4, 2, 49, 8, 20, 32);
}

TEST_CASE("instance: offline and live agree for cake, headkv and duoattention, which the live cache plans before the cut") {
  // cake plans across layers (Strategy::needs_model_plan): the live cache profiles the layer after
  // the prompt's forward pass and cuts at the first decode token; the replay plans from the layer.
  check_same("cake:budget=16,window=4", 4, 2, 49, 8, 30, 41);
  check_same("cake:budget=12,window=3,kernel=1,gamma=5", 4, 2, 49, 8, 30, 42);
  // headkv and duoattention with head scores from files (uneven: the two KV heads differ).
  const test::TempDir tmp;
  std::ofstream(tmp.file("q.tsv")) << "1 2 3 4\n";
  std::ofstream(tmp.file("kv.tsv")) << "0.2 0.7\n";
  check_same("headkv:budget=12,window=4,scores=" + tmp.file("q.tsv"), 4, 2, 49, 8, 30, 43);
  check_same("duoattention:sink=2,recent=6,scores=" + tmp.file("kv.tsv"), 4, 2, 49, 8, 30, 44);
}

TEST_CASE("instance: check_fits and check_prefill refuse what cannot run, with the numbers") {
  const ModelShape shape{5, 4, 2, 8};
  auto h2o = make_strategy("h2o:budget=8");
  CHECK_NOTHROW(check_fits(*h2o, shape, 40, 10));
  auto msg = [](auto f) {
    try {
      f();
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(msg([&] { check_fits(*h2o, shape, 40, 40); }) == "prefill P = 40 must satisfy 1 <= P < T = 40");
  CHECK(msg([&] { check_prefill(10, 0); }) == "prefill P = 0 must satisfy 1 <= P < T = 10");
  // A codec group that does not divide D = 8 fails up front, not inside a replay thread.
  CHECK(msg([&] { check_fits(*make_strategy("full+quant:bits=4,group=3"), shape, 40, 10); }) != "no error");
  // make_context: one instance per KV head, or one per layer holding every KV head (tova).
  auto tova = make_strategy("tova:budget=8");
  CHECK(instances_per_layer(*h2o, 2) == 2);
  CHECK(instances_per_layer(*tova, 2) == 1);
  const InstanceContext a = make_context(*h2o, shape, 3, 1, 40, 10), b = make_context(*tova, shape, 3, 0, 40, 10);
  CHECK((a.layer == 3 && a.n_layers == 5 && a.kv0 == 1 && a.n_caches == 1 && a.G == 2 && a.D == 8));
  CHECK((b.kv0 == 0 && b.n_caches == 2 && b.T == 40 && b.P == 10));
  // The memory ratio: bytes over an fp16 full cache of t + 1 tokens (2 bytes x 2 tensors x D).
  CHECK(cache_ratio(4.0 * 8 * 10, 8, 9) == 1.0);
}
