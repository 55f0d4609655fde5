// The arithmetic of `kvsim capacity` (README "How long a context fits"): the KV bytes per token of
// a model shape, the weights' bytes, and from a memory size the longest context at a batch and the
// largest batch at a context. Plain functions of plain numbers, so the tests check them by hand.
#pragma once

#include <cstdint>
#include <string>

#include "traces/model/model.h"
#include "traces/synth.h"

namespace kvsim::tools {

// "24GiB", "512MiB", "1.5GB", "1000000" (bytes): binary (KiB, MiB, GiB, TiB) and decimal (KB, MB, GB,
// TB) units, case-insensitive, B optional; UsageError naming `what` for anything else, a negative
// or non-finite size, or one past 2^62 bytes.
int64_t parse_size(const std::string& s, const std::string& what);
// "24 GiB", "512 MiB", "1.50 KiB", "100 B".
std::string size_str(double bytes);

// K and V of every (layer, KV head), at `bytes_per_element` bytes (2: fp16): 2 * L * Hkv * D * b.
int64_t kv_bytes_per_token(int64_t L, int64_t Hkv, int64_t D, int64_t bytes_per_element = 2);
// Parameters of a Llama-family decoder: embedding, lm_head unless tied, per layer the two norms,
// q/k/v/o projections (and q/k/v biases), the SwiGLU FFN's three matrices, and the final norm.
int64_t parameter_count(const model::ModelConfig& c);
// The decoder configuration of a named shape (dim = H * D); hidden_dim 0 when the shape is not a
// real model's (its weights unknown).
model::ModelConfig config_of_shape(const traces::SynthShape& s);
// Bytes per weight of --weights-dtype: fp32 4, fp16 and bf16 2, int8 1, nf4 0.5625 (4 bits plus an
// fp32 absmax per block of 64: 4.5 bits); UsageError listing them otherwise.
double weight_dtype_bytes(const std::string& dtype);

// floor(available / (batch * per_token)): the longest context (tokens per sequence) of `batch`
// sequences whose KV takes per_token bytes per token; 0 when nothing is available.
int64_t max_context(double available, double per_token, int64_t batch);
// floor(available / (context * per_token)): the most sequences of `context` tokens.
int64_t max_batch(double available, double per_token, int64_t context);

}  // namespace kvsim::tools
