// splitmix64 (Steele, Lea, Flood 2014): the one seeded generator behind kvsim's randomness (random's
// evictions, the Count-Min Sketch hashes, MagicPIG's projections), so that a NumPy check can
// reproduce a stream with Python integers.
#pragma once

#include <cstdint>

namespace kvsim {

inline uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace kvsim
