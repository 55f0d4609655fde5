// Next-token choice: greedy (temperature 0) or sampled with temperature and nucleus (top-p)
// truncation from a seeded generator, as llama2.c's sampler does.
#pragma once

#include <cstdint>
#include <vector>

namespace kvsim::model {

struct SamplerOptions {
  float temperature = 0.0f;  // 0: greedy (argmax; ties go to the lowest id)
  float top_p = 1.0f;        // in (0, 1]; 1: no truncation
  uint64_t seed = 42;
};

class Sampler {
 public:
  explicit Sampler(SamplerOptions opt);              // throws UsageError for out-of-range options
  int32_t next(const float* logits, int64_t vocab);  // logits are not modified

 private:
  float uniform();  // [0, 1)
  SamplerOptions opt_;
  uint64_t state_;
  std::vector<float> probs_;
  std::vector<int32_t> order_;
};

}  // namespace kvsim::model
