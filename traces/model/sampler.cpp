#include "traces/model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "sim/base/error.h"
#include "sim/kernels/forward_ops.h"

namespace kvsim::model {

Sampler::Sampler(SamplerOptions opt) : opt_(opt), state_(opt.seed ? opt.seed : 0x9E3779B97F4A7C15ull) {
  if (!(opt.temperature >= 0.0f) || !std::isfinite(opt.temperature))
    throw UsageError("--temperature = " + std::to_string(opt.temperature) + " must be >= 0");
  if (!(opt.top_p > 0.0f && opt.top_p <= 1.0f))
    throw UsageError("--top-p = " + std::to_string(opt.top_p) + " must be in (0, 1]");
}

float Sampler::uniform() {  // xorshift64*, top 24 bits
  state_ ^= state_ >> 12;
  state_ ^= state_ << 25;
  state_ ^= state_ >> 27;
  return static_cast<float>((state_ * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;
}

int32_t Sampler::next(const float* logits, int64_t vocab) {
  if (opt_.temperature == 0.0f) return static_cast<int32_t>(ref::argmax(logits, vocab));
  probs_.assign(logits, logits + vocab);
  for (auto& p : probs_) p /= opt_.temperature;
  ref::softmax(probs_.data(), vocab);
  const float r = uniform();
  order_.resize(static_cast<size_t>(vocab));
  std::iota(order_.begin(), order_.end(), 0);
  if (opt_.top_p < 1.0f) {
    // nucleus: the smallest set of most likely tokens whose mass reaches top_p (ties: lower id)
    std::sort(order_.begin(), order_.end(), [&](int32_t a, int32_t b) {
      return probs_[static_cast<size_t>(a)] != probs_[static_cast<size_t>(b)]
                 ? probs_[static_cast<size_t>(a)] > probs_[static_cast<size_t>(b)]
                 : a < b;
    });
    float mass = 0.0f;
    size_t keep = 0;
    while (keep < order_.size() && mass < opt_.top_p) mass += probs_[static_cast<size_t>(order_[keep++])];
    order_.resize(keep);
    float acc = 0.0f;
    for (int32_t id : order_) {
      acc += probs_[static_cast<size_t>(id)] / mass;
      if (r < acc) return id;
    }
    return order_.back();
  }
  float acc = 0.0f;
  for (int32_t id : order_) {
    acc += probs_[static_cast<size_t>(id)];
    if (r < acc) return id;
  }
  return static_cast<int32_t>(vocab - 1);
}

}  // namespace kvsim::model
