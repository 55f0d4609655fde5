// Writes a model in the Hugging Face layout (config.json + model.safetensors). Interleaved-RoPE
// models (llama2.c) get the rows of wq and wk permuted within each head so that the rotate-half
// pairing of Hugging Face sees the same pairs: new row a*D/2 + i = old row 2i + a (a in {0, 1}),
// as in transformers' convert_llama_weights_to_hf.py.
#include <filesystem>
#include <nlohmann/json.hpp>

#include "sim/base/error.h"
#include "sim/base/new_file.h"
#include "traces/model/model.h"
#include "traces/model/safetensors.h"

namespace kvsim::model {

namespace {

std::vector<float> permute_rope_rows(const std::vector<float>& w, int64_t heads, int64_t D, int64_t cols) {
  std::vector<float> out(w.size());
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t a = 0; a < 2; ++a)
      for (int64_t i = 0; i < D / 2; ++i)
        std::copy_n(w.data() + (h * D + 2 * i + a) * cols, cols, out.data() + (h * D + a * D / 2 + i) * cols);
  return out;
}

}  // namespace

void save_hf(const Model& m, const std::string& dir, const std::string& dtype) {
  namespace fs = std::filesystem;
  const ModelConfig& c = m.config;
  StDType dt;
  std::string torch_dtype;
  if (dtype == "float32")
    dt = StDType::f32, torch_dtype = "float32";
  else if (dtype == "float16")
    dt = StDType::f16, torch_dtype = "float16";
  else if (dtype == "bfloat16")
    dt = StDType::bf16, torch_dtype = "bfloat16";
  else
    throw UsageError("--dtype " + dtype + ": choose float32, float16 or bfloat16");
  if (c.rope_style == RopeStyle::none) throw UsageError(c.name + ": models without RoPE cannot be written as Llama");
  if (!c.inv_freq.empty()) throw UsageError(c.name + ": rope_scaling is not carried over by the converter");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw IoError(dir + ": cannot create directory (" + ec.message() + ")");

  nlohmann::ordered_json j;
  j["architectures"] = {c.qkv_bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM"};
  j["model_type"] = c.qkv_bias ? "qwen2" : "llama";
  j["hidden_size"] = c.dim;
  j["intermediate_size"] = c.hidden_dim;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.seq_len;
  j["rope_theta"] = c.rope_theta;
  j["rms_norm_eps"] = c.norm_eps;
  j["tie_word_embeddings"] = c.tied_embeddings;
  j["hidden_act"] = "silu";
  j["bos_token_id"] = 1;
  j["eos_token_id"] = 2;
  j["torch_dtype"] = torch_dtype;
  {
    NewFile out((fs::path(dir) / "config.json").string());
    const std::string text = j.dump(2) + "\n";
    out.write(text.data(), text.size());
    out.commit();
  }

  const bool permute = c.rope_style == RopeStyle::interleaved;
  std::vector<std::vector<float>> keep;  // permuted copies outlive the write
  std::vector<StOut> t;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, const std::vector<float>& data) {
    t.push_back(StOut{name, std::move(shape), data.data()});
  };
  const int64_t dim = c.dim, qd = c.q_dim(), kvd = c.kv_dim(), hid = c.hidden_dim;
  keep.reserve(static_cast<size_t>(2 * c.n_layers));
  add("model.embed_tokens.weight", {c.vocab_size, dim}, m.embedding);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = m.layers[static_cast<size_t>(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {dim}, w.rms_att);
    if (permute) {
      keep.push_back(permute_rope_rows(w.wq, c.n_heads, c.head_dim, dim));
      add(p + "self_attn.q_proj.weight", {qd, dim}, keep.back());
      keep.push_back(permute_rope_rows(w.wk, c.n_kv_heads, c.head_dim, dim));
      add(p + "self_attn.k_proj.weight", {kvd, dim}, keep.back());
    } else {
      add(p + "self_attn.q_proj.weight", {qd, dim}, w.wq);
      add(p + "self_attn.k_proj.weight", {kvd, dim}, w.wk);
    }
    add(p + "self_attn.v_proj.weight", {kvd, dim}, w.wv);
    if (c.qkv_bias) {
      if (permute) throw UsageError(c.name + ": q/k biases with interleaved RoPE are not supported by the converter");
      add(p + "self_attn.q_proj.bias", {qd}, w.bq);
      add(p + "self_attn.k_proj.bias", {kvd}, w.bk);
      add(p + "self_attn.v_proj.bias", {kvd}, w.bv);
    }
    add(p + "self_attn.o_proj.weight", {dim, qd}, w.wo);
    add(p + "post_attention_layernorm.weight", {dim}, w.rms_ffn);
    add(p + "mlp.gate_proj.weight", {hid, dim}, w.w1);
    add(p + "mlp.up_proj.weight", {hid, dim}, w.w3);
    add(p + "mlp.down_proj.weight", {dim, hid}, w.w2);
  }
  add("model.norm.weight", {dim}, m.rms_final);
  if (!c.tied_embeddings) add("lm_head.weight", {c.vocab_size, dim}, m.lm_head);
  write_safetensors((fs::path(dir) / "model.safetensors").string(), t, dt, {{"format", "pt"}});
}

}  // namespace kvsim::model
