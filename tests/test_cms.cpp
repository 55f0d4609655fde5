// Count-Min Sketch (sim/cms.h). Expected values: exact counts kept beside the sketch in the test.
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <random>

#include "sim/cms.h"
#include "sim/error.h"

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

TEST_CASE("cms: never under-counts; conservative update stays within eps * total in >= 1 - delta of keys (seeds 1..5)") {
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
