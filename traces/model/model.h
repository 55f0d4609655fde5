// A Llama-family decoder in memory: its configuration and its weights, converted to float32.
// Loaders: llama2.c checkpoints (llama2c.cpp) and Hugging Face directories (hf_loader.cpp).
// Linear weights are stored as PyTorch stores them, [out, in] row-major.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sim/base/rope.h"

namespace kvsim::model {

struct ModelConfig {
  std::string name;             // path or name, for trace headers and messages
  std::string hf_architecture;  // LlamaForCausalLM ... ("llama2.c" for legacy checkpoints)
  int64_t dim = 0;              // hidden size
  int64_t hidden_dim = 0;       // FFN inner size
  int64_t n_layers = 0;         // L
  int64_t n_heads = 0;          // H
  int64_t n_kv_heads = 0;       // Hkv
  int64_t head_dim = 0;         // D
  int64_t vocab_size = 0;
  int64_t seq_len = 0;  // context length
  double rope_theta = 10000.0;
  RopeStyle rope_style = RopeStyle::interleaved;
  std::vector<float> inv_freq;  // [D/2] when rope_scaling changes the frequencies, else empty
  float norm_eps = 1e-5f;
  bool tied_embeddings = true;
  bool qkv_bias = false;  // Qwen2

  int64_t q_dim() const { return n_heads * head_dim; }
  int64_t kv_dim() const { return n_kv_heads * head_dim; }
  // Throws FormatError naming `where` if dimensions are missing, inconsistent or out of range.
  void validate(const std::string& where) const;
};

struct LayerWeights {
  std::vector<float> rms_att;     // [dim]
  std::vector<float> wq;          // [H*D, dim]
  std::vector<float> wk;          // [Hkv*D, dim]
  std::vector<float> wv;          // [Hkv*D, dim]
  std::vector<float> bq, bk, bv;  // [H*D], [Hkv*D], [Hkv*D] when qkv_bias, else empty
  std::vector<float> wo;          // [dim, H*D]
  std::vector<float> rms_ffn;     // [dim]
  std::vector<float> w1;          // [hidden, dim] gate
  std::vector<float> w2;          // [dim, hidden] down
  std::vector<float> w3;          // [hidden, dim] up
};

struct Model {
  ModelConfig config;
  std::vector<float> embedding;  // [vocab, dim]
  std::vector<LayerWeights> layers;
  std::vector<float> rms_final;  // [dim]
  std::vector<float> lm_head;    // [vocab, dim]; empty when tied to the embedding

  const float* classifier() const { return lm_head.empty() ? embedding.data() : lm_head.data(); }
  // Checks every tensor's size against the config; throws FormatError naming the tensor.
  void validate() const;
};

// A llama2.c checkpoint (a regular file) or a Hugging Face directory (config.json + safetensors).
Model load_model(const std::string& path);
Model load_llama2c(const std::string& path);
Model load_hf(const std::string& dir);
// A Hugging Face config.json alone (a file, or a directory holding one): the configuration without
// weights, as load_hf reads it (kvsim capacity).
ModelConfig load_hf_config(const std::string& path);

// Writes `model` as a Hugging Face directory: config.json (Llama, or Qwen2 when it has q/k/v
// biases) and model.safetensors in dtype float32 | float16 | bfloat16. Interleaved-RoPE weights are
// permuted to the rotate-half convention (hf_writer.cpp).
void save_hf(const Model& model, const std::string& dir, const std::string& dtype = "float32");

// Random weights (uniform, std 0.02; norms 1), seeded: for benchmarks and loader tests.
Model random_model(const ModelConfig& config, uint64_t seed);

// Llama-3 rope_scaling: the D/2 scaled inverse frequencies.
std::vector<float> llama3_inv_freq(int64_t D, double theta, double factor, double low_freq_factor,
                                   double high_freq_factor, double original_max_position);

}  // namespace kvsim::model
