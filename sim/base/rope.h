// Rotary position embedding, shared by the forward pass and the synthetic trace generator.
// interleaved: pairs (x[2i], x[2i+1]) (llama2.c, Meta checkpoints); half: pairs (x[i], x[i + D/2])
// (Hugging Face "rotate_half"). Frequency of pair i: theta^(-2i/D).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "sim/base/error.h"

namespace kvsim {

enum class RopeStyle { interleaved, half, none };

inline RopeStyle parse_rope_style(const std::string& s) {
  if (s == "interleaved") return RopeStyle::interleaved;
  if (s == "half") return RopeStyle::half;
  if (s == "none") return RopeStyle::none;
  throw UsageError("unknown rope style '" + s + "' (choose interleaved, half or none)");
}

// Rotates x in place: x is [n_tok, D] for positions pos0 .. pos0 + n_tok - 1.
// inv_freq, if given, overrides theta^(-2i/D) (Llama-3 rope_scaling); it has D/2 entries.
inline void apply_rope(float* x, int64_t n_tok, int64_t D, int64_t pos0, double theta, RopeStyle style,
                       const float* inv_freq = nullptr) {
  if (style == RopeStyle::none) return;
  const int64_t half = D / 2;
  for (int64_t t = 0; t < n_tok; ++t) {
    float* row = x + t * D;
    const double pos = static_cast<double>(pos0 + t);
    for (int64_t i = 0; i < half; ++i) {
      const double f = inv_freq ? static_cast<double>(inv_freq[i])
                                : std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(D));
      const double a = pos * f;
      const float c = static_cast<float>(std::cos(a)), s = static_cast<float>(std::sin(a));
      const int64_t i0 = style == RopeStyle::interleaved ? 2 * i : i;
      const int64_t i1 = style == RopeStyle::interleaved ? 2 * i + 1 : i + half;
      const float x0 = row[i0], x1 = row[i1];
      row[i0] = x0 * c - x1 * s;
      row[i1] = x0 * s + x1 * c;
    }
  }
}

}  // namespace kvsim
