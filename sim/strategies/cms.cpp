#include "sim/strategies/cms.h"

#include "sim/base/splitmix.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "sim/base/error.h"

namespace kvsim {

namespace {

constexpr uint64_t kP = (uint64_t{1} << 61) - 1;

uint64_t mod_p(__uint128_t x) {
  uint64_t r = static_cast<uint64_t>(x & kP) + static_cast<uint64_t>(x >> 61);
  r = (r & kP) + (r >> 61);
  return r >= kP ? r - kP : r;
}

}  // namespace

CountMinSketch::CountMinSketch(int64_t width, int64_t depth, uint64_t seed) : width_(width), depth_(depth) {
  if (width < 1) throw UsageError("count-min sketch width = " + std::to_string(width) + " must be >= 1");
  if (depth < 1) throw UsageError("count-min sketch depth = " + std::to_string(depth) + " must be >= 1");
  if (depth > 64 || width > (int64_t{1} << 28) / depth)  // width * depth <= 2^28, by division: no overflow
    throw UsageError("count-min sketch " + std::to_string(depth) + " x " + std::to_string(width) +
                     " is too large (depth <= 64, width * depth <= 2^28 counters)");
  uint64_t s = seed;
  for (int64_t j = 0; j < depth; ++j) {
    a_.push_back(1 + splitmix64(s) % (kP - 1));
    b_.push_back(splitmix64(s) % kP);
  }
  counts_.assign(static_cast<size_t>(width * depth), 0.0f);
}

CountMinSketch CountMinSketch::for_error(double eps, double delta, uint64_t seed) {
  if (!(eps > 0 && eps < 1) || !(delta > 0 && delta < 1))
    throw UsageError("count-min sketch eps = " + std::to_string(eps) + ", delta = " + std::to_string(delta) +
                     " must both be in (0, 1)");
  return CountMinSketch(static_cast<int64_t>(std::ceil(std::exp(1.0) / eps)),
                        static_cast<int64_t>(std::ceil(std::log(1.0 / delta))), seed);
}

int64_t CountMinSketch::bucket(int64_t row, int64_t key) const {
  const uint64_t x = static_cast<uint64_t>(key) % kP;
  const uint64_t h = mod_p(static_cast<__uint128_t>(a_[static_cast<size_t>(row)]) * x + b_[static_cast<size_t>(row)]);
  return static_cast<int64_t>(h % static_cast<uint64_t>(width_));
}

void CountMinSketch::add(int64_t key, float count) {
  float est = INFINITY;
  for (int64_t j = 0; j < depth_; ++j) est = std::min(est, counts_[static_cast<size_t>(j * width_ + bucket(j, key))]);
  const float target = est + count;
  for (int64_t j = 0; j < depth_; ++j) {
    float& c = counts_[static_cast<size_t>(j * width_ + bucket(j, key))];
    c = std::max(c, target);
  }
  total_ += count;
}

float CountMinSketch::estimate(int64_t key) const {
  float est = INFINITY;
  for (int64_t j = 0; j < depth_; ++j) est = std::min(est, counts_[static_cast<size_t>(j * width_ + bucket(j, key))]);
  return est;
}

void CountMinSketch::clear() {
  std::fill(counts_.begin(), counts_.end(), 0.0f);
  total_ = 0;
}

}  // namespace kvsim
