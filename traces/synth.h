// Synthetic traces with the structure real attention has, for tests and benchmarks (never for
// fidelity claims: files are marked synthetic = 1). Each structural feature is one knob:
//
//   sinks / sink_logit       the first `sinks` tokens carry a key component that every query
//                            matches: an attention-sink logit advantage of about sink_logit.
//   local_logit              queries and keys share a per-KV-head direction before RoPE, on the
//                            high-frequency RoPE pairs, so after RoPE their dot product is largest
//                            at distance 0 and decays within a few tokens (the locality RoPE
//                            produces); about local_logit at distance 0.
//   heavy_frac / heavy_logit a random fraction of tokens are heavy hitters: a key component that
//                            all queries match, for a logit advantage of about heavy_logit.
//   outlier_channels /       that many pre-RoPE key channels per KV head carry a large constant
//   outlier_scale            offset (outlier_scale x the noise scale), as in the key outlier
//                            channels that per-channel key quantization is designed for.
//   sink_value_scale         values of sink tokens are scaled down (sinks carry little content).
//
// Logit noise has standard deviation about 1. Strengths vary by query head and layer (x0.6..1.4).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "traces/schema.h"
#include "traces/writer.h"

namespace kvsim::traces {

struct SynthShape {
  std::string name;
  int64_t n_layers, n_heads, n_kv_heads, head_dim, vocab_size;
  double rope_theta;
  std::string rope_style;
  // What the weights' size needs (kvsim capacity): the FFN inner size (0: not a real model's shape,
  // its weights unknown), an lm_head tied to the embedding, q/k/v biases (Qwen2). dim = H * D.
  int64_t ffn_dim = 0;
  bool tied_embeddings = false, qkv_bias = false;
};

const std::vector<SynthShape>& synth_shapes();
const SynthShape& find_synth_shape(const std::string& name);  // throws UsageError listing the shapes

struct SynthOptions {
  int64_t tokens = 512;
  int64_t prefill = -1;      // -1: tokens / 2
  int64_t context_len = -1;  // written as each sequence's context_len when >= 1 (traces/FORMAT.md)
  int64_t sequences = 1;
  uint64_t seed = 0;
  int64_t layers = -1;  // -1: the shape's; fewer layers make a slice of a big model
  int64_t sinks = 4;
  double sink_logit = 6.0;
  double local_logit = 4.0;
  double heavy_frac = 0.03;
  double heavy_logit = 4.0;
  int64_t outlier_channels = 2;
  double outlier_scale = 8.0;
  double sink_value_scale = 0.1;
  DType dtype = DType::f32;
  bool write_pre = false;  // also write q_pre / k_pre
};

// Writes a complete synthetic trace to `path` (via NAME.h5.partial and an atomic rename).
void write_synthetic_trace(const std::string& path, const SynthShape& shape, const SynthOptions& opt,
                           const WriterOptions& wopt = {});

}  // namespace kvsim::traces
