#include <cmath>

#include "traces/model/model.h"

namespace kvsim::model {

Model random_model(const ModelConfig& config, uint64_t seed) {
  Model m;
  m.config = config;
  m.config.validate(config.name);
  const ModelConfig& c = m.config;
  // Uniform in [-a, a] with standard deviation 0.02 from a splitmix64 stream: fast enough to fill
  // a 7B-width slice (~0.5 G weights) in seconds.
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  const float a = 0.02f * std::sqrt(3.0f);
  auto fill = [&](std::vector<float>& v, int64_t n) {
    v.resize(static_cast<size_t>(n));
    for (auto& x : v) {
      uint64_t z = (state += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      z ^= z >> 31;
      x = a * (static_cast<float>(z >> 40) / 8388608.0f - 1.0f);
    }
  };
  auto ones = [](std::vector<float>& v, int64_t n) { v.assign(static_cast<size_t>(n), 1.0f); };
  fill(m.embedding, c.vocab_size * c.dim);
  m.layers.resize(static_cast<size_t>(c.n_layers));
  for (auto& l : m.layers) {
    ones(l.rms_att, c.dim);
    fill(l.wq, c.q_dim() * c.dim);
    fill(l.wk, c.kv_dim() * c.dim);
    fill(l.wv, c.kv_dim() * c.dim);
    if (c.qkv_bias) {
      fill(l.bq, c.q_dim());
      fill(l.bk, c.kv_dim());
      fill(l.bv, c.kv_dim());
    }
    fill(l.wo, c.dim * c.q_dim());
    ones(l.rms_ffn, c.dim);
    fill(l.w1, c.hidden_dim * c.dim);
    fill(l.w2, c.dim * c.hidden_dim);
    fill(l.w3, c.hidden_dim * c.dim);
  }
  ones(m.rms_final, c.dim);
  if (!c.tied_embeddings) fill(m.lm_head, c.vocab_size * c.dim);
  return m;
}

}  // namespace kvsim::model
