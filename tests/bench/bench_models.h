// Models of the forward-pass benchmarks (bench_forward.cpp, bench_cuda_forward.cpp): stories260K
// (real weights from ../shared/models, null without it) and a 7B-width slice (Llama-2-7B widths,
// two layers, seeded random weights), with a deterministic token sequence.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "traces/model/model.h"

namespace kvsim::bench {

inline const model::Model* stories() {
  static std::unique_ptr<model::Model> m = [] {
    const std::string p = KVSIM_BENCH_SOURCE_DIR "/../shared/models/stories260K/stories260K.bin";
    return std::filesystem::exists(p) ? std::make_unique<model::Model>(model::load_llama2c(p)) : nullptr;
  }();
  return m.get();
}

inline const model::Model* slice7b() {
  static std::unique_ptr<model::Model> m = [] {
    model::ModelConfig c;
    c.name = "random 7B-width slice (2 layers)";
    c.hf_architecture = "LlamaForCausalLM";
    c.dim = 4096, c.hidden_dim = 11008, c.n_layers = 2, c.n_heads = 32, c.n_kv_heads = 32, c.head_dim = 128;
    c.vocab_size = 32000, c.seq_len = 4096, c.rope_style = RopeStyle::half, c.tied_embeddings = true;
    return std::make_unique<model::Model>(model::random_model(c, 7));
  }();
  return m.get();
}

// 0: stories260K, 1: the slice.
inline const model::Model* pick(int which) { return which == 0 ? stories() : slice7b(); }

inline std::vector<int32_t> ids_for(const model::Model& m, int64_t n) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    ids[static_cast<size_t>(i)] = static_cast<int32_t>(1 + (i * 37) % (m.config.vocab_size - 1));
  return ids;
}

}  // namespace kvsim::bench
