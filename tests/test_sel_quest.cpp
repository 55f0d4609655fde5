// quest (sim/strategies/quest.cpp) on layers small enough to work out by hand: which pages each
// query head reads, the newest-page rule (last=1, the reference kernel) against plain top-n
// (last=0, the reference's evaluation path), dense layers, bytes and read_bytes, composition with
// a codec, and bad parameters. Every expected value is written out in the comments.
#include <doctest/doctest.h>

#include <set>
#include <vector>

#include "sim/base/spec.h"
#include "sim/exact_stats.h"
#include "sim/instance.h"
#include "sim/replay.h"
#include "sim_test_util.h"

using namespace kvsim;
using kvsim::test::Layer;

namespace {

struct Step {
  int64_t t = 0;
  std::set<int32_t> read[2];  // positions query head g attended over
  std::set<int32_t> loaded;   // union over the heads
  double bytes = 0, read_bytes = 0;
};

std::vector<Step> run_sparse(const std::string& spec, Layer& L, int64_t P, int64_t layer = 0, int64_t n_layers = 1) {
  auto s = make_strategy(spec);
  LayerView lv = L.view();
  Instance inst(*s, make_context(*s, ModelShape{n_layers, L.H, L.Hkv, L.D}, layer, 0, L.T, P, Protocol::sparse));
  inst.prefill_from(lv);
  std::vector<Step> out;
  for (int64_t t = P; t < L.T; ++t)
    inst.step(lv, t, kernels(Backend::ref).attend_slots, [&](const Instance& in, int64_t step) {
      Step st;
      st.t = step;
      for (int64_t g = 0; g < L.H / L.Hkv; ++g) {
        st.read[g] = test::positions(in.attended(0, g));
        st.loaded.insert(st.read[g].begin(), st.read[g].end());
      }
      st.bytes = in.bytes(0), st.read_bytes = in.read_bytes(0);
      out.push_back(st);
    });
  return out;
}

// The layer of the hand case: D = 2, one KV head, G = 2, T = 10, pages of 2 positions.
Layer hand_layer() {
  Layer L(2, 1, 10, 2);
  const float k[10][2] = {{1, 0}, {0, 0.5f}, {-2, 1}, {0.5f, -1}, {3, 0}, {-1, 2}, {0, 2}, {0.25f, 0}, {2, -3}, {0, 0}};
  for (int64_t t = 0; t < 10; ++t) {
    L.K(0, t, 0) = k[t][0], L.K(0, t, 1) = k[t][1];
    L.V(0, t, 0) = float(t);
    L.Q(0, t, 0) = 1, L.Q(0, t, 1) = -1;  // head 0: U_p = max_x − min_y over the page
    L.Q(1, t, 0) = -1, L.Q(1, t, 1) = 1;  // head 1: U_p = max_y − min_x
  }
  return L;
}

std::set<int32_t> range(int32_t a, int32_t b) {
  std::set<int32_t> r;
  for (int32_t i = a; i <= b; ++i) r.insert(i);
  return r;
}

}  // namespace

TEST_CASE("quest: page bounds pick the pages by hand, with and without the newest page") {
  // Pages {0,1} {2,3} {4,5} {6,7} {8,9}. B = 6, page 2: n = min(max(3, 3), 5) = 3 pages.
  // Head 0 (q = (1, -1)): U = 1, 1.5, 3, 0.25, then page 4 = 2 − (−3) = 5 (at t = 8 and 9).
  // Head 1 (q = (-1, 1)): U = 0.5, 3, 3, 2; page 4 = −3 − 2 = −5 at t = 8, 0 − 0 = 0 at t = 9.
  Layer L = hand_layer();
  const auto a = run_sparse("quest:budget=6,page=2,dense_layers=", L, 8);
  const auto b = run_sparse("quest:budget=6,page=2,dense_layers=,last=0", L, 8);
  REQUIRE(a.size() == 2);
  REQUIRE(b.size() == 2);
  // last=1: the newest page 4 plus the top 2 of pages 0..3: head 0 {2, 1}, head 1 {1, 2}.
  CHECK(a[0].read[0] == std::set<int32_t>{2, 3, 4, 5, 8});
  CHECK(a[0].read[1] == std::set<int32_t>{2, 3, 4, 5, 8});
  CHECK(a[1].read[0] == std::set<int32_t>{2, 3, 4, 5, 8, 9});
  CHECK(a[1].read[1] == std::set<int32_t>{2, 3, 4, 5, 8, 9});
  // last=0: the top 3 of all pages: head 0 {4, 2, 1}; head 1 {1, 2, 3} (page 4 ranks last).
  CHECK(b[0].read[0] == std::set<int32_t>{2, 3, 4, 5, 8});
  CHECK(b[0].read[1] == range(2, 7));
  CHECK(b[1].read[0] == std::set<int32_t>{2, 3, 4, 5, 8, 9});
  CHECK(b[1].read[1] == range(2, 7));
  // Bytes: fp16 K and V (4·D = 8 per token) plus fp16 min and max per page (4·D = 8 per page, 5 pages).
  CHECK(a[0].bytes == 8.0 * 9 + 8.0 * 5);
  CHECK(a[1].bytes == 8.0 * 10 + 8.0 * 5);
  // read: every page's metadata once, plus the union of the heads' slots.
  CHECK(a[0].read_bytes == 8.0 * 5 + 8.0 * 5);
  CHECK(a[1].read_bytes == 8.0 * 6 + 8.0 * 5);
  CHECK(b[0].read_bytes == 8.0 * 7 + 8.0 * 5);  // union: positions 2..8
  CHECK(b[1].read_bytes == 8.0 * 8 + 8.0 * 5);  // union: positions 2..9
}

TEST_CASE("quest: at least 3 pages are read, and never more than there are") {
  Layer L = hand_layer();
  // B = 2, page 2: ⌊B/page⌋ = 1, so max(3, 1) = 3 pages (head 0 at t = 8: 4, 2, 1 as above).
  const auto a = run_sparse("quest:budget=2,page=2,dense_layers=", L, 8);
  CHECK(a[0].read[0] == std::set<int32_t>{2, 3, 4, 5, 8});
  // B = 64: 32 pages wanted, 5 exist: everything is read.
  const auto b = run_sparse("quest:budget=64,page=2,dense_layers=", L, 8);
  CHECK(b[0].read[0] == range(0, 8));
  CHECK(b[1].read[1] == range(0, 9));
  CHECK(b[1].read_bytes == b[1].bytes);  // all K/V and all metadata
  // Page 16 (the default): one page holds everything.
  const auto c = run_sparse("quest:budget=2,dense_layers=", L, 8);
  CHECK(c[0].read[0] == range(0, 8));
  CHECK(c[0].bytes == 8.0 * 9 + 8.0 * 1);
}

TEST_CASE("quest: dense layers read every slot and hold no metadata") {
  Layer L = hand_layer();
  // Default dense_layers=0,1: layers 0 and 1 are dense, layer 2 is not.
  for (int64_t layer : {0, 1}) {
    const auto a = run_sparse("quest:budget=6,page=2", L, 8, layer, 3);
    CHECK(a[0].read[0] == range(0, 8));
    CHECK(a[0].bytes == 8.0 * 9);
    CHECK(a[0].read_bytes == 8.0 * 9);
  }
  const auto c = run_sparse("quest:budget=6,page=2", L, 8, 2, 3);
  CHECK(c[0].read[0] == std::set<int32_t>{2, 3, 4, 5, 8});
  const auto d = run_sparse("quest:budget=6,page=2,dense_layers=2", L, 8, 2, 3);
  CHECK(d[0].read[1] == range(0, 8));
  CHECK(make_strategy("quest:budget=6")->params().at("dense_layers") == "0,1");
  CHECK(make_strategy("quest:budget=6,dense_layers=")->params().at("dense_layers") == "");
  CHECK(make_strategy("quest:budget=6,dense_layers=0,3,page=4")->params().at("dense_layers") == "0,3");
}

TEST_CASE("quest: reading every page equals full exactly, on every metric") {
  Layer L(4, 2, 37, 8);
  L.fill_random(17, 1.5f);
  LayerView lv = L.view();
  ExactStats rs;
  compute_exact_stats(lv, Backend::ref, rs);
  lv.entropy = rs.entropy.data();
  auto full = make_strategy("full"), quest = make_strategy("quest:budget=64,dense_layers=");
  auto replay = [&](const Strategy& s, Protocol p) { return test::replay_one_layer(lv, rs, s, p, 5); };
  const ConfigResult a = replay(*full, Protocol::evict), b = replay(*quest, Protocol::sparse);
  for (int m = 0; m < kNumMetrics; ++m) {
    if (m == int(Metric::bytes) || m == int(Metric::ratio) || m == int(Metric::read_bytes) ||
        m == int(Metric::read_ratio))
      continue;  // quest holds and reads its page metadata on top
    INFO(metric_name(m));
    CHECK(a.summary[m].mean == b.summary[m].mean);
    CHECK(a.summary[m].worst == b.summary[m].worst);
  }
}

TEST_CASE("quest: composes with a codec, read_bytes takes each read slot at its share of the codec bytes") {
  Layer L(2, 1, 120, 8);
  L.fill_random(23);
  auto s = make_strategy("quest:budget=32,dense_layers=+kivi:bits=2");
  CHECK(s->is_selector());
  LayerView lv = L.view();
  const int64_t P = 40, D = 8;
  Instance inst(*s, make_context(*s, ModelShape{1, 2, 1, D}, 0, 0, L.T, P, Protocol::sparse));
  inst.prefill_from(lv);
  int checked = 0;
  for (int64_t t = P; t < L.T; ++t)
    inst.step(lv, t, kernels(Backend::ref).attend_slots, [&](const Instance& in, int64_t step) {
      const int64_t n = step + 1, pages = step / 16 + 1;
      const double meta = 4.0 * D * pages, held = in.bytes(0) - meta;
      std::set<int32_t> u = test::positions(in.attended(0, 0)), u1 = test::positions(in.attended(0, 1));
      u.insert(u1.begin(), u1.end());
      // B = 32, page 16: n = min(max(3, 2), pages) pages per head.
      CHECK(test::positions(in.attended(0, 0)).size() <= 16u * 3u);
      CHECK(in.read_bytes(0) == doctest::Approx(held * double(u.size()) / double(n) + meta).epsilon(1e-12));
      if (n > 64) {
        CHECK(held < 4.0 * D * n);  // keys and values quantized: fewer bytes than fp16
        ++checked;
      }
    });
  CHECK(checked > 0);
}

TEST_CASE("quest: bad parameters are one-line errors") {
  auto msg = [](const std::string& spec, int64_t L = 5) {
    try {
      auto s = make_strategy(spec);
      check_fits(*s, ModelShape{L, 8, 4, 8}, 512, 40, Protocol::sparse);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(msg("quest:budget=64") == "no error");
  CHECK(msg("quest:budget=64,dense_layers=") == "no error");
  CHECK(msg("quest").find("exactly one of budget") != std::string::npos);
  CHECK(msg("quest:budget=64,page=0").find("page=0 must be >= 1") != std::string::npos);
  CHECK(msg("quest:budget=64,last=2").find("last=2 must be in [0, 1]") != std::string::npos);
  CHECK(msg("quest:budget=64,dense_layers=x").find("not a list of integers") != std::string::npos);
  CHECK(msg("quest:budget=64,dense_layers=0,7").find("holds layer 7 but the trace has L = 5 layers (0..4)") !=
        std::string::npos);
  CHECK(msg("quest:budget=64,dense_layers=-1").find("not a list of integers") == std::string::npos);
  CHECK(msg("quest:budget=64,dense_layers=-1").find("dense_layers holds -1") != std::string::npos);
  CHECK(msg("quest:budget=64+kivi:bits=2") == "no error");
}

TEST_CASE("spec: a bare integer after key=value extends the value as a list, key= is empty") {
  const StrategySpec s = parse_spec("quest:budget=64,dense_layers=0,1,16,page=4");
  CHECK(s.params.at("dense_layers") == "0,1,16");
  CHECK(s.params.at("page") == "4");
  CHECK(s.params.at("budget") == "64");
  CHECK(parse_spec("quest:dense_layers=,budget=3").params.at("dense_layers") == "");
  CHECK_THROWS_AS(parse_spec("quest:budget=4,x"), UsageError);  // not an integer: not a list item
  CHECK_THROWS_AS(parse_spec("quest:4"), UsageError);           // nothing to extend
}
