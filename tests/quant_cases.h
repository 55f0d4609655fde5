// The quantization kernels' case list, shared by tests/test_quant.cpp (ref against the direct
// implementation of tests/quant_direct.h) and tests/test_cuda_quant.cpp (the GPU against ref). It
// holds the shapes, bits, axes and groups of the ref/omp harness of tests/test_quant.cpp, plus data
// built to break kernels: T in {1, 31, 33, 97, 4097}, constant and all-zero blocks with mixed
// signed zeros, outlier channels, values whose fp16 scale is subnormal or rounds to 0, values near
// the fp16 limit, and exact rounding ties (uniform: (x - min) / scale = k + 1/2; NF4: x / absmax
// exactly on a midpoint between two code values, as float).
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "sim/kernels/quant.h"

namespace kvsim::test {

enum class QuantData { normal, outlier, constant, zeros, tiny, tinier, large, ties };

inline const char* data_name(QuantData d) {
  switch (d) {
    case QuantData::normal: return "normal";
    case QuantData::outlier: return "outlier channels";
    case QuantData::constant: return "constant blocks";
    case QuantData::zeros: return "signed zeros";
    case QuantData::tiny: return "fp16-subnormal scale";
    case QuantData::tinier: return "scale rounds to 0";
    case QuantData::large: return "near the fp16 limit";
    case QuantData::ties: return "rounding ties";
  }
  return "?";
}

// x: [T, D]. `bits` shapes the uniform ties (0 selects the NF4 ties).
inline std::vector<float> make_data(QuantData kind, int64_t T, int64_t D, uint32_t seed, int bits) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> x(static_cast<size_t>(T * D));
  const float levels = static_cast<float>((1 << bits) - 1);
  float nf4_mid[15];
  for (int i = 0; i < 15; ++i) nf4_mid[i] = 0.5f * (kNf4Values[i] + kNf4Values[i + 1]);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t d = 0; d < D; ++d) {
      float& v = x[static_cast<size_t>(t * D + d)];
      const float r = nd(rng);
      switch (kind) {
        case QuantData::normal: v = r; break;
        case QuantData::outlier:  // a shifted channel (KIVI's key outliers) and rare huge spikes in another
          v = d == 5 % D ? r + 20.0f : (d == D - 1 && t % 7 == 0 ? 3000.0f : r);
          break;
        case QuantData::constant: v = d == 1 % D ? -3.0f : 1.25f; break;
        case QuantData::zeros: v = d == 1 % D ? r : (r < 0 ? -0.0f : 0.0f); break;
        case QuantData::tiny: v = r * 1e-5f; break;
        case QuantData::tinier: v = r * 1e-9f; break;
        case QuantData::large: v = std::clamp(r * 2e4f, -6e4f, 6e4f); break;
        case QuantData::ties: {
          // Any 4 (uniform) or 16 (NF4) consecutive tokens or channels hold every residue of t + d,
          // so each block holds its extremes and lands on exact ties.
          const int64_t k = (t + d) % (bits ? 4 : 16);
          if (bits) {
            const float pattern[4] = {0.0f, levels, 0.5f, levels - 1.5f};  // min 0, scale 1: codes of k + 1/2
            v = pattern[k];
          } else {
            v = k == 0 ? 1.0f : nf4_mid[k - 1];  // absmax 1: x / absmax is the midpoint itself
          }
          break;
        }
      }
    }
  }
  return x;
}

using Shape = std::pair<int64_t, int64_t>;  // (T, D) or (T, group)

struct UCase {
  int64_t T, D;
  int bits;
  QuantAxis axis;
  int64_t group;
  QuantData data;
  uint32_t seed;
};

struct NCase {
  int64_t T, D;
  QuantAxis axis;
  int64_t block;
  bool dq;
  QuantData data;
  uint32_t seed;
};

inline std::string describe(const UCase& c) {
  return "uniform T=" + std::to_string(c.T) + " D=" + std::to_string(c.D) + " bits=" + std::to_string(c.bits) +
         (c.axis == QuantAxis::channel ? " axis=channel" : " axis=token") + " group=" + std::to_string(c.group) +
         " data=" + data_name(c.data) + " seed=" + std::to_string(c.seed);
}
inline std::string describe(const NCase& c) {
  return "nf4 T=" + std::to_string(c.T) + " D=" + std::to_string(c.D) +
         (c.axis == QuantAxis::channel ? " axis=channel" : " axis=token") + " block=" + std::to_string(c.block) +
         (c.dq ? " dq=1" : " dq=0") + " data=" + data_name(c.data) + " seed=" + std::to_string(c.seed);
}

inline std::vector<UCase> uniform_cases() {
  std::vector<UCase> cs;
  const QuantAxis tok = QuantAxis::token, ch = QuantAxis::channel;
  // The ref/omp harness of tests/test_quant.cpp (seed 21 + T, normal data).
  for (auto [T, D] : {Shape{32, 8}, Shape{96, 128}, Shape{4096, 64}, Shape{64, 96}})
    for (int bits : {2, 4, 8}) {
      cs.push_back({T, D, bits, tok, D % 32 == 0 ? 32 : 8, QuantData::normal, static_cast<uint32_t>(21 + T)});
      cs.push_back({T, D, bits, ch, 32, QuantData::normal, static_cast<uint32_t>(21 + T)});
    }
  // T off powers of two and larger than a warp; per-channel groups that divide odd T need 8 bits.
  for (int64_t T : {1, 31, 33, 97, 4097})
    for (int bits : {2, 4, 8}) {
      cs.push_back({T, 128, bits, tok, 32, QuantData::normal, static_cast<uint32_t>(100 + T)});
      cs.push_back({T, 24, bits, tok, 8, QuantData::normal, static_cast<uint32_t>(200 + T)});
    }
  for (auto [T, g] : {Shape{1, 1}, Shape{31, 31}, Shape{33, 11}, Shape{33, 33}, Shape{97, 97}, Shape{4097, 17}})
    cs.push_back({T, 40, 8, ch, g, QuantData::normal, static_cast<uint32_t>(300 + T)});
  for (int bits : {2, 4}) {
    cs.push_back({36, 40, bits, ch, 4, QuantData::normal, 400});
    cs.push_back({100, 24, bits, ch, 100, QuantData::normal, 401});
    cs.push_back({4100, 8, bits, ch, 20, QuantData::normal, 402});
  }
  // Adversarial data on both axes and all bit widths.
  for (QuantData d : {QuantData::outlier, QuantData::constant, QuantData::zeros, QuantData::tiny, QuantData::tinier,
                      QuantData::large, QuantData::ties})
    for (int bits : {2, 4, 8}) {
      cs.push_back({33, 128, bits, tok, 32, d, 500});
      cs.push_back({97, 24, bits, tok, 8, d, 501});
      cs.push_back({96, 40, bits, ch, 32, d, 502});
      cs.push_back({100, 8, bits, ch, 4, d, 503});
    }
  return cs;
}

inline std::vector<NCase> nf4_cases() {
  std::vector<NCase> cs;
  const QuantAxis tok = QuantAxis::token, ch = QuantAxis::channel;
  for (bool dq : {false, true}) {
    for (QuantAxis axis : {tok, ch}) {
      // The ref/omp harness of tests/test_quant.cpp (which runs axis = token), and axis = channel.
      for (auto [T, D] : {Shape{32, 8}, Shape{96, 128}, Shape{4096, 64}, Shape{64, 96}})
        cs.push_back({T, D, axis, 64, dq, QuantData::normal, static_cast<uint32_t>(21 + T)});
      // T off powers of two; 4097 x 128 is 8194 blocks: 33 double-quantization groups, the last partial.
      for (auto [T, D] : {Shape{1, 64}, Shape{31, 128}, Shape{97, 128}, Shape{4097, 128}})
        cs.push_back({T, D, axis, 64, dq, QuantData::normal, static_cast<uint32_t>(600 + T)});
      // Small odd blocks that straddle rows (token) or columns (channel).
      cs.push_back({33, 4, axis, 6, dq, QuantData::normal, 700});
      cs.push_back({97, 6, axis, 2, dq, QuantData::normal, 701});
      for (QuantData d : {QuantData::outlier, QuantData::constant, QuantData::zeros, QuantData::tiny, QuantData::tinier,
                          QuantData::large, QuantData::ties})
        cs.push_back({97, 128, axis, 64, dq, d, 800});
    }
  }
  return cs;
}

// Compares two arrays as bit patterns; on a mismatch reports the first differing element.
template <typename T>
void check_same_bits(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
  INFO(what);
  REQUIRE(got.size() == want.size());
  if (got.empty() || std::memcmp(got.data(), want.data(), got.size() * sizeof(T)) == 0) return;
  size_t i = 0;
  while (std::memcmp(&got[i], &want[i], sizeof(T)) == 0) ++i;
  size_t n_diff = 0;
  for (size_t j = 0; j < got.size(); ++j) n_diff += std::memcmp(&got[j], &want[j], sizeof(T)) != 0;
  FAIL_CHECK(std::string(what) << ": " << n_diff << " of " << got.size() << " elements differ; first at index " << i
                               << ": got " << +got[i] << ", want " << +want[i]);
}

inline void check_same_bits(float got, float want, const char* what) {
  check_same_bits(std::vector<float>{got}, std::vector<float>{want}, what);
}

}  // namespace kvsim::test
