// pqcache (sim/strategies/pqcache.cpp) on tiny layers whose k-means, codes, scores and bytes were
// worked out by hand (2 centroids per sub-space, one Lloyd iteration changes nothing after the first).
#include <doctest/doctest.h>

#include <set>

#include "sim/base/error.h"
#include "sim/instance.h"
#include "sim_test_util.h"

using namespace kvsim;
using kvsim::test::Layer;

namespace {

struct Step {
  std::set<int32_t> read[2];
  double bytes = 0, read_bytes = 0;
};

std::vector<Step> run(const std::string& spec, Layer& L, int64_t P) {
  auto s = make_strategy(spec);
  Instance inst(*s, make_context(*s, ModelShape{1, L.H, L.Hkv, L.D}, 0, 0, L.T, P, Protocol::sparse));
  LayerView lv = L.view();
  inst.prefill_from(lv);
  std::vector<Step> out;
  for (int64_t t = P; t < L.T; ++t)
    inst.step(lv, t, kernels(Backend::ref).attend_slots, [&](const Instance& in, int64_t) {
      Step st;
      for (int64_t g = 0; g < 2; ++g) st.read[g] = test::positions(in.attended(0, g));
      st.bytes = in.bytes(0), st.read_bytes = in.read_bytes(0);
      out.push_back(st);
    });
  return out;
}

}  // namespace

TEST_CASE("pqcache new=exact: k-means per sub-space, centroid-table scores, top of the middle, bytes by hand") {
  // D = 2, m = 2 (one channel per sub-space), bits = 1; P = 10, sinks 1, local 2: the middle is 1..7.
  // x of 1..7: 0 1 10 11 0 1 12, init tokens 1 and 4 (k·7/2) -> centroids 0.5, 11, codes 0011001.
  // y of 1..7: 5 -5 5 -5 -5 5 0, init 5, -5; 0 ties to the lower -> centroids 3.75, -5, codes 0101100.
  Layer L(2, 1, 12, 2);
  const float x[8] = {0, 0, 1, 10, 11, 0, 1, 12}, y[8] = {0, 5, -5, 5, -5, -5, 5, 0};
  for (int64_t t = 0; t < 12; ++t) {
    L.K(0, t, 0) = t < 8 ? x[t] : 3, L.K(0, t, 1) = t < 8 ? y[t] : 3;
    L.Q(0, t, 0) = 1, L.Q(0, t, 1) = 1;   // scores 4.25 -4.5 14.75 6 -4.5 4.25 14.75: top 3 = 3, 7, 4
    L.Q(1, t, 0) = -1, L.Q(1, t, 1) = 1;  // scores 3.25 -5.5 -7.25 -16 -5.5 3.25 -7.25: 1, 6, then 2 (tie to 5)
  }
  for (const char* spec :
       {"pqcache:sinks=1,local=2,bits=1,top=0.45,new=exact", "pqcache:sinks=1,local=2,bits=1,budget=7,new=exact"}) {
    CAPTURE(spec);
    const auto st = run(spec, L, 10);
    REQUIRE(st.size() == 2);
    const bool by_budget = std::string(spec).find("budget") != std::string::npos;
    CHECK(st[0].read[0] == std::set<int32_t>{0, 3, 4, 7, 8, 9, 10});
    CHECK(st[0].read[1] == std::set<int32_t>{0, 1, 2, 6, 8, 9, 10});
    // Step 11: every decode token stays exact; top=0.45 still picks int(0.45·7) = 3, budget=7 one fewer.
    CHECK(st[1].read[0] ==
          (by_budget ? std::set<int32_t>{0, 3, 7, 8, 9, 10, 11} : std::set<int32_t>{0, 3, 4, 7, 8, 9, 10, 11}));
    CHECK(st[1].read[1] ==
          (by_budget ? std::set<int32_t>{0, 1, 6, 8, 9, 10, 11} : std::set<int32_t>{0, 1, 2, 6, 8, 9, 10, 11}));
    // Held: 4·D per token + 7 tokens × 2 codes × 1 bit + 2^1·D fp16 centroids (8 bytes).
    CHECK(st[0].bytes == 8.0 * 11 + 1.75 + 8);
    // Read: the 7 candidates' codes + the centroids + the union of both heads' slots (10 of 11).
    CHECK(st[0].read_bytes == 8.0 * 10 + 1.75 + 8);
  }
}

TEST_CASE("pqcache new=code: the window slides and decode tokens compete with their nearest centroids' codes") {
  // D = 2, m = 1, bits = 1; P = 6, sinks 1, local 1. k-means over 1..5 with x = -3 -2 2 3 4 (y = 0):
  // init tokens 1, 3 -> centroids (-2.5, 0), (3, 0), codes 00111. Decode keys 6 = (-5, 0) -> code 0,
  // 7 = (5, 0) -> 1, 8 = (0, 0) -> 0 (6.25 < 9). Head 0 q = (1, 0): tables -2.5, 3; head 1 the negation.
  Layer L(2, 1, 9, 2);
  const float x[9] = {1, -3, -2, 2, 3, 4, -5, 5, 0};
  for (int64_t t = 0; t < 9; ++t) L.K(0, t, 0) = x[t], L.Q(0, t, 0) = 1, L.Q(1, t, 0) = -1;
  const auto st = run("pqcache:sinks=1,local=1,bits=1,m=1,top=0.5", L, 6);
  REQUIRE(st.size() == 3);
  // t = 6: window 5..6, candidates 1..4, int(0.5·4) = 2.
  CHECK(st[0].read[0] == std::set<int32_t>{0, 3, 4, 5, 6});
  CHECK(st[0].read[1] == std::set<int32_t>{0, 1, 2, 5, 6});
  // t = 7: candidates 1..5 (5 has code 1), 2 of them: 3, 4, 5 tie at 3, the lower positions win.
  CHECK(st[1].read[0] == std::set<int32_t>{0, 3, 4, 6, 7});
  // t = 8: candidates 1..6, 3 of them; decode token 6 (code 0) is read by head 1 as a top candidate.
  CHECK(st[2].read[0] == std::set<int32_t>{0, 3, 4, 5, 7, 8});
  CHECK(st[2].read[1] == std::set<int32_t>{0, 1, 2, 6, 7, 8});
  // Held at t = 8: codes of 1..8 (8 × 1 bit) + 2 centroids × D fp16; read: 6 candidates' codes +
  // centroids + the union of the heads' slots (all 9).
  CHECK(st[2].bytes == 8.0 * 9 + 1 + 8);
  CHECK(st[2].read_bytes == 8.0 * 9 + 0.75 + 8);
  // budget=5 reads sinks + window (3) + 2: the same as top=0.5 at t = 6.
  CHECK(run("pqcache:sinks=1,local=1,bits=1,m=1,budget=5", L, 6)[0].read[0] == std::set<int32_t>{0, 3, 4, 5, 6});
}

TEST_CASE("pqcache: the paper's defaults on a short prompt read everything (the middle is empty)") {
  Layer L(2, 1, 9, 2);
  L.fill_random(3);
  for (const char* spec : {"pqcache", "pqcache:sinks=1,local=1,bits=3,m=1"}) {  // empty middle; 5 < 8 centroids
    CAPTURE(spec);
    const auto st = run(spec, L, 6);
    for (size_t i = 0; i < st.size(); ++i) {
      const int64_t t = 6 + static_cast<int64_t>(i);
      CHECK(st[i].read[0].size() == static_cast<size_t>(t + 1));
      CHECK(st[i].bytes == 8.0 * (t + 1));
      CHECK(st[i].read_bytes == 8.0 * (t + 1));
    }
  }
}

TEST_CASE("pqcache: bad parameters are one-line usage errors") {
  for (const char* spec :
       {"pqcache:bits=0", "pqcache:bits=17", "pqcache:m=0", "pqcache:iters=0", "pqcache:top=0", "pqcache:top=1.5",
        "pqcache:budget=0", "pqcache:budget=8,top=0.2", "pqcache:new=later", "pqcache:sinks=-1", "pqcache:ratio=0.1"}) {
    CAPTURE(spec);
    CHECK_THROWS_AS(make_strategy(spec), UsageError);
  }
  CHECK_THROWS_AS(check_fits(*make_strategy("pqcache:m=3"), ModelShape{1, 2, 1, 8}, 20, 8, Protocol::sparse),
                  UsageError);
  CHECK_NOTHROW(check_fits(*make_strategy("pqcache:m=4"), ModelShape{1, 2, 1, 8}, 20, 8, Protocol::sparse));
}
