// magicpig (sim/strategies/magicpig.cpp) on a tiny layer worked out by hand. The keys are built so
// that the outcome does not depend on the Gaussian W: a centred key that is a positive multiple of the
// query shares every sign bit with it (sampled, cos 1, w = 1), a negative multiple shares none (never
// sampled); for a key at 45° with K = 1, L = 3, exactly one of k' and -k' matches in >= 2 of the 3
// tables, and its weight is w = 1 - (1-p)^3 - 3p(1-p)^2 with p = u = 3/4 (w = 27/32) or 1/4 (5/32).
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <set>

#include "sim/base/error.h"
#include "sim/instance.h"
#include "sim_test_util.h"

using namespace kvsim;
using kvsim::test::Layer;

namespace {

// D = 2, one KV head, G = 2, P = 8, T = 10. Sink 0, local 7; M = 1..6 with mean key (0, 0).
Layer tiny() {
  Layer L(2, 1, 10, 2);
  const float k[10][2] = {{0.5f, 0.5f}, {2, 0},   {1, 0}, {-1, 0},      {-2, 0},
                          {1, 1},       {-1, -1}, {0, 1}, {0.3f, 0.2f}, {0.1f, -0.4f}};
  for (int64_t t = 0; t < 10; ++t) {
    L.K(0, t, 0) = k[t][0], L.K(0, t, 1) = k[t][1];
    L.V(0, t, 0) = static_cast<float>(t);
    L.Q(0, t, 0) = 1, L.Q(1, t, 0) = -1;  // head 0 looks along +x, head 1 along -x
  }
  return L;
}

struct Step {
  std::map<int32_t, float> read[2];  // per query head: position -> logit correction
  double bytes = 0, read_bytes = 0;
};

std::vector<Step> run(const std::string& spec, Layer& L, int64_t P, int64_t n_layers = 1, int64_t layer = 0) {
  auto s = make_strategy(spec);
  Instance inst(*s, make_context(*s, ModelShape{n_layers, L.H, L.Hkv, L.D}, layer, 0, L.T, P, Protocol::sparse));
  LayerView lv = L.view();
  inst.prefill_from(lv);
  std::vector<Step> out;
  for (int64_t t = P; t < L.T; ++t)
    inst.step(lv, t, kernels(Backend::ref).attend_slots, [&](const Instance& in, int64_t) {
      Step st;
      for (int64_t g = 0; g < 2; ++g) {
        const SlotCache& r = in.attended(0, g);
        for (int64_t i = 0; i < r.size(); ++i) st.read[g][r.pos(i)] = r.bias(i);
      }
      st.bytes = in.bytes(0), st.read_bytes = in.read_bytes(0);
      out.push_back(st);
    });
  return out;
}

std::set<int32_t> keys(const std::map<int32_t, float>& m) {
  std::set<int32_t> s;
  for (const auto& [p, b] : m) s.insert(p);
  return s;
}

}  // namespace

TEST_CASE("magicpig: sampled by sign agreement, corrected by -log(w + 1e-4), exact set and bytes by hand") {
  Layer L = tiny();
  for (const char* spec :
       {"magicpig:K=1,L=3,sinks=1,local=1,dense_layers=", "magicpig:K=1,L=3,sinks=1,local=1,dense_layers=,seed=7"}) {
    CAPTURE(spec);
    const auto st = run(spec, L, 8);
    REQUIRE(st.size() == 2);
    for (size_t i = 0; i < st.size(); ++i) {
      const int32_t t = static_cast<int32_t>(8 + i);
      for (int g = 0; g < 2; ++g) {
        const auto& r = st[i].read[g];
        CAPTURE(g);
        for (int32_t e : {0, 7, 8}) CHECK(r.at(e) == 0.0f);  // E: sink, local, decode tokens, plain logits
        if (t == 9) CHECK(r.at(9) == 0.0f);
        const int32_t par[2][2] = {{1, 2}, {3, 4}};  // parallel to head g's query: always sampled, w = 1
        for (int32_t p : par[g]) CHECK(r.at(p) == doctest::Approx(-std::log(1.0 + 1e-4)).epsilon(1e-6));
        for (int32_t p : par[1 - g]) CHECK(r.count(p) == 0);  // anti-parallel: never
        // Tokens 5 = (1, 1) and 6 = (-1, -1): exactly one of them, for head 0 at cos ±1/√2.
        CHECK(r.count(5) + r.count(6) == 1);
        const int32_t near = g == 0 ? 5 : 6;  // the one at +45° to head g's query
        if (r.count(near)) CHECK(r.at(near) == doctest::Approx(-std::log(27.0 / 32 + 1e-4)).epsilon(1e-6));
        if (r.count(11 - near)) CHECK(r.at(11 - near) == doctest::Approx(-std::log(5.0 / 32 + 1e-4)).epsilon(1e-6));
        CHECK(r.size() == static_cast<size_t>(t - 8 + 3 + 2 + 1));
      }
      // Head 1 sees the mirror image: it samples 6 exactly when head 0 samples 5.
      CHECK(st[i].read[0].count(5) == st[i].read[1].count(6));
      // Bytes: fp16 K,V 4·D per token + L int16 codes per M token (2·3·6) + μ in fp16 (2·D).
      CHECK(st[i].bytes == 8.0 * (t + 1) + 36 + 4);
      // Read: all M codes (36) + the union of both heads' slots, here every token.
      CHECK(st[i].read_bytes == 8.0 * (t + 1) + 36);
    }
  }
}

TEST_CASE("magicpig: dense layers (default 0, 16, 32, 48, 64) and an empty sampled region read every slot") {
  Layer L = tiny();
  for (const auto& [spec, P, layers, layer] : std::vector<std::tuple<std::string, int64_t, int64_t, int64_t>>{
           {"magicpig:K=1,L=3,sinks=1,local=1", 8, 1, 0},
           {"magicpig:K=1,L=3,sinks=1,local=1", 8, 20, 16},
           {"magicpig:K=1,L=3,sinks=1,local=1,dense_layers=2", 8, 3, 2},
           {"magicpig:K=1,L=3,sinks=4,local=4,dense_layers=", 8, 1, 0}}) {
    CAPTURE(spec);
    CAPTURE(layer);
    const auto st = run(spec, L, P, layers, layer);
    for (size_t i = 0; i < st.size(); ++i) {
      const int64_t t = P + static_cast<int64_t>(i);
      for (int g = 0; g < 2; ++g) {
        CHECK(st[i].read[g].size() == static_cast<size_t>(t + 1));
        for (const auto& [p, b] : st[i].read[g]) CHECK(b == 0.0f);
      }
      CHECK(st[i].bytes == 8.0 * (t + 1));  // no codes held
      CHECK(st[i].read_bytes == 8.0 * (t + 1));
    }
  }
  // Layer 1 of 20 is not dense by default: it samples.
  const auto st = run("magicpig:K=1,L=3,sinks=1,local=1", L, 8, 20, 1);
  CHECK(keys(st[0].read[0]).count(3) == 0);
  CHECK(make_strategy("magicpig")->params().at("dense_layers") == "0,16,32,48,64");
}

TEST_CASE("magicpig: bad parameters are one-line usage errors") {
  for (const char* spec : {"magicpig:K=0", "magicpig:K=17", "magicpig:L=1", "magicpig:sinks=-1", "magicpig:local=-2",
                           "magicpig:dense_layers=-1", "magicpig:dense_layers=a", "magicpig:budget=4"}) {
    CAPTURE(spec);
    CHECK_THROWS_AS(make_strategy(spec), UsageError);
  }
  // A dense layer the trace does not have, and the cache protocols: refused before any work.
  CHECK_THROWS_AS(
      check_fits(*make_strategy("magicpig:dense_layers=0,5"), ModelShape{5, 2, 1, 2}, 20, 8, Protocol::sparse),
      UsageError);
  CHECK_NOTHROW(
      check_fits(*make_strategy("magicpig:dense_layers=0,4"), ModelShape{5, 2, 1, 2}, 20, 8, Protocol::sparse));
  CHECK_THROWS_AS(check_fits(*make_strategy("magicpig"), ModelShape{5, 2, 1, 2}, 20, 8, Protocol::evict), UsageError);
}
