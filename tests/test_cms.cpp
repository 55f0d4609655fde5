// Count-Min Sketch (sim/strategies/cms.h). Expected values: exact counts kept beside the sketch in the test.
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <random>

#include "sim/base/error.h"
#include "sim/strategies/cms.h"

using namespace kvsim;

TEST_CASE("cms: hand case with width 1 (every key collides)") {
  // One bucket per row: conservative update keeps the counter at the running total.
  CountMinSketch s(1, 3, 7);
  s.add(5, 1.0f);
  s.add(9, 2.0f);
  CHECK(s.estimate(5) == 3.0f);
  CHECK(s.estimate(9) == 3.0f);
  CHECK(s.estimate(123) == 3.0f);
  CHECK(s.bytes() == 1 * 3 * 4 + 3 * 16);
}

TEST_CASE("cms: never under-counts and conservative update stays within eps * total in >= 1 - delta of keys (seeds 1..5)") {
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    const double eps = 0.01, delta = 0.05;
    auto s = CountMinSketch::for_error(eps, delta, seed);
    CHECK(s.width() == 272);  // ceil(e / 0.01)
    CHECK(s.depth() == 3);    // ceil(ln 20)
    std::mt19937 rng(static_cast<uint32_t>(seed));
    // Zipf-like stream over 5000 positions: attention-like heavy head and long tail.
    std::vector<double> w(5000);
    for (size_t i = 0; i < w.size(); ++i) w[i] = 1.0 / std::pow(static_cast<double>(i + 1), 1.1);
    std::discrete_distribution<int> pick(w.begin(), w.end());
    std::uniform_real_distribution<float> mass(0.0f, 1.0f);
    std::map<int64_t, double> truth;
    double total = 0;
    for (int i = 0; i < 50000; ++i) {
      const int64_t key = pick(rng);
      const float c = mass(rng);
      s.add(key, c);
      truth[key] += c;
      total += c;
    }
    int under = 0, over_bound = 0;
    for (int64_t key = 0; key < 5000; ++key) {
      const double t = truth.count(key) ? truth[key] : 0.0;
      const double e = s.estimate(key);
      if (e < t * (1 - 1e-5) - 1e-4) ++under;  // float accumulation slack
      if (e - t > eps * total) ++over_bound;
    }
    CHECK(under == 0);
    CHECK(over_bound <= delta * 5000);
    MESSAGE("seed " << seed << ": " << over_bound << " of 5000 keys over eps * total");
  }
}

TEST_CASE("cms: bad sizes are one-line usage errors") {
  CHECK_THROWS_WITH_AS(CountMinSketch(0, 2, 1), "count-min sketch width = 0 must be >= 1", UsageError);
  CHECK_THROWS_WITH_AS(CountMinSketch(8, -1, 1), "count-min sketch depth = -1 must be >= 1", UsageError);
  CHECK_THROWS_AS(CountMinSketch::for_error(0.0, 0.1, 1), UsageError);
}

#include <filesystem>

#include "traces/reader.h"

TEST_CASE("cms on real attention: over-count <= eps * t in >= 1 - delta of positions (embedded stories260K trace)") {
  // Exact attention rows of real heads, accumulated per key position over all T steps (total
  // mass t = T), are fed to a sketch sized for eps = 0.01, delta = 0.05 (w = 272 < T = 512 keys, so
  // buckets collide). Expected: the exact sums computed here beside the sketch.
  const std::string path = std::string(KVSIM_SOURCE_DIR) + "/traces/samples/stories260K.h5";
  REQUIRE(std::filesystem::exists(path));
  kvsim::traces::TraceReader r(path);
  const int64_t T = r.sequence(0).n_tokens, D = r.header().head_dim, G = r.header().n_heads / r.header().n_kv_heads;
  const double eps = 0.01, delta = 0.05;
  int checked = 0;
  for (int64_t layer : {0, 2, 4}) {
    auto q = r.read_layer(0, layer, kvsim::traces::Kind::q);
    auto k = r.read_layer(0, layer, kvsim::traces::Kind::k);
    for (int64_t h : {0, 5}) {
      auto s = CountMinSketch::for_error(eps, delta, static_cast<uint64_t>(layer * 10 + h));
      std::vector<double> truth(static_cast<size_t>(T), 0.0), z(static_cast<size_t>(T));
      for (int64_t t = 0; t < T; ++t) {
        double mx = -1e300, sum = 0;
        for (int64_t i = 0; i <= t; ++i) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(q(h, t, d)) * k(h / G, i, d);
          z[static_cast<size_t>(i)] = dot / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, z[static_cast<size_t>(i)]);
        }
        for (int64_t i = 0; i <= t; ++i) sum += (z[static_cast<size_t>(i)] = std::exp(z[static_cast<size_t>(i)] - mx));
        for (int64_t i = 0; i <= t; ++i) {
          const double p = z[static_cast<size_t>(i)] / sum;
          truth[static_cast<size_t>(i)] += p;
          s.add(i, static_cast<float>(p));
        }
      }
      int64_t under = 0, over = 0;
      for (int64_t i = 0; i < T; ++i) {
        const double e = s.estimate(i), tr = truth[static_cast<size_t>(i)];
        if (e < tr - 1e-3 * std::max(1.0, tr)) ++under;  // float accumulation slack
        if (e - tr > eps * static_cast<double>(T)) ++over;
      }
      CHECK(under == 0);
      CHECK(static_cast<double>(over) <= delta * static_cast<double>(T));
      MESSAGE("layer " << layer << " head " << h << ": " << over << " of " << T << " positions over eps * t");
      ++checked;
    }
  }
  CHECK(checked == 6);
}
