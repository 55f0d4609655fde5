// Count-Min Sketch over token positions (Cormode & Muthukrishnan 2005) with real-valued counts
// (accumulated attention) and conservative update (Estan & Varghese 2002): an update raises each
// of the d counters only as far as needed, so estimates never under-count and over-count less.
// Hashes are pairwise independent: h_j(x) = ((a_j x + b_j) mod p) mod w, p = 2^61 - 1.
// With w = ceil(e / eps) and d = ceil(ln(1 / delta)), estimate(x) <= true(x) + eps * total
// with probability at least 1 - delta (for the plain update; conservative update only lowers it).
#pragma once

#include <cstdint>
#include <vector>

namespace kvsim {

class CountMinSketch {
 public:
  // Throws UsageError for width or depth < 1.
  CountMinSketch(int64_t width, int64_t depth, uint64_t seed);

  // Sizing from the error bound: width = ceil(e / eps), depth = ceil(ln(1 / delta)).
  static CountMinSketch for_error(double eps, double delta, uint64_t seed);

  void add(int64_t key, float count);  // conservative update; count >= 0
  float estimate(int64_t key) const;   // min over rows, >= the true sum
  float total() const { return total_; }
  void clear();

  int64_t width() const { return width_; }
  int64_t depth() const { return depth_; }
  // Bytes the sketch occupies: d x w fp32 counters plus d hash pairs (two 64-bit words each).
  int64_t bytes() const { return width_ * depth_ * 4 + depth_ * 16; }
  int64_t bucket(int64_t row, int64_t key) const;

 private:
  int64_t width_, depth_;
  std::vector<uint64_t> a_, b_;
  std::vector<float> counts_;  // [depth, width]
  float total_ = 0;
};

}  // namespace kvsim
