// Hugging Face Llama-family checkpoints: config.json plus *.safetensors (with
// model.safetensors.index.json when sharded), F32/F16/BF16. Hugging Face checkpoints use the
// rotate-half RoPE pairing (RopeStyle::half).
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "sim/base/error.h"
#include "sim/base/regular_file.h"
#include "traces/model/model.h"
#include "traces/model/safetensors.h"

namespace kvsim::model {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::set<std::string> kArchitectures = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"};

template <typename T>
T get_field(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || j.at(key).is_null()) throw FormatError(where + ": missing field \"" + key + "\"");
  try {
    return j.at(key).get<T>();
  } catch (const json::exception& e) {
    throw FormatError(where + ": field \"" + key + "\" has the wrong type (" + e.what() + ")");
  }
}

template <typename T>
T get_or(const json& j, const char* key, T def, const std::string& where) {
  if (!j.contains(key) || j.at(key).is_null()) return def;
  return get_field<T>(j, key, where);
}

}  // namespace

ModelConfig load_hf_config(const std::string& path) {
  const bool is_dir = fs::is_directory(path);
  const std::string where = is_dir ? (fs::path(path) / "config.json").string() : path;
  require_regular_file(where, "model config");
  std::ifstream in(where);
  if (!in)
    throw UsageError(is_dir ? path + ": not a Hugging Face model directory (no config.json)"
                            : path + ": cannot open the config file");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw FormatError(where + ": not JSON (" + e.what() + ")");
  }
  ModelConfig c;
  c.name = is_dir ? path : where;
  const auto archs = get_field<std::vector<std::string>>(j, "architectures", where);
  if (archs.size() != 1 || !kArchitectures.count(archs[0]))
    throw FormatError(where + ": architecture " + (archs.empty() ? std::string("[]") : archs[0]) +
                      " is not supported (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)");
  c.hf_architecture = archs[0];
  c.dim = get_field<int64_t>(j, "hidden_size", where);
  c.hidden_dim = get_field<int64_t>(j, "intermediate_size", where);
  c.n_layers = get_field<int64_t>(j, "num_hidden_layers", where);
  c.n_heads = get_field<int64_t>(j, "num_attention_heads", where);
  c.n_kv_heads = get_or<int64_t>(j, "num_key_value_heads", c.n_heads, where);
  c.head_dim = get_or<int64_t>(j, "head_dim", c.n_heads > 0 ? c.dim / c.n_heads : 0, where);
  c.vocab_size = get_field<int64_t>(j, "vocab_size", where);
  c.seq_len = get_field<int64_t>(j, "max_position_embeddings", where);
  c.rope_theta = get_or<double>(j, "rope_theta", 10000.0, where);
  c.norm_eps = static_cast<float>(get_or<double>(j, "rms_norm_eps", 1e-6, where));
  c.tied_embeddings = get_or<bool>(j, "tie_word_embeddings", false, where);
  c.rope_style = RopeStyle::half;
  c.qkv_bias = c.hf_architecture == "Qwen2ForCausalLM" || get_or<bool>(j, "attention_bias", false, where);
  const std::string act = get_or<std::string>(j, "hidden_act", "silu", where);
  if (act != "silu") throw FormatError(where + ": hidden_act = " + act + " is not supported (silu)");
  if (get_or<bool>(j, "mlp_bias", false, where)) throw FormatError(where + ": mlp_bias = true is not supported");
  if (get_or<bool>(j, "use_sliding_window", false, where))
    throw FormatError(where + ": use_sliding_window = true is not supported");
  if (c.hf_architecture == "MistralForCausalLM") {
    // Mistral's sliding window only matters past it: cap the context so attention stays exact.
    const int64_t w = get_or<int64_t>(j, "sliding_window", 0, where);
    if (w > 0 && w < c.seq_len) c.seq_len = w;
  }
  if (j.contains("rope_scaling") && !j.at("rope_scaling").is_null()) {
    const json& rs = j.at("rope_scaling");
    const std::string rw = where + ": rope_scaling";
    std::string type = get_or<std::string>(rs, "rope_type", get_or<std::string>(rs, "type", "", rw), rw);
    if (type == "llama3") {
      c.inv_freq = llama3_inv_freq(
          c.head_dim, c.rope_theta, get_field<double>(rs, "factor", rw), get_field<double>(rs, "low_freq_factor", rw),
          get_field<double>(rs, "high_freq_factor", rw), get_field<double>(rs, "original_max_position_embeddings", rw));
    } else if (type == "linear") {
      const double factor = get_field<double>(rs, "factor", rw);
      for (int64_t i = 0; i < c.head_dim / 2; ++i)
        c.inv_freq.push_back(static_cast<float>(
            std::pow(c.rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(c.head_dim)) / factor));
    } else if (type != "default") {
      throw FormatError(rw + ": rope_type \"" + type + "\" is not supported (llama3, linear)");
    }
  }
  c.validate(where);
  return c;
}

namespace {

// config.json's num_hidden_layers must match the weights exactly: a layer the config leaves out
// would be skipped silently (a different, worse model), so a tensor of a layer >= L is refused.
template <typename Map>
void check_layer_count(const Map& all, int64_t L, const std::string& where) {
  const std::string prefix = "model.layers.";
  int64_t top = -1;
  std::string example;
  for (const auto& entry : all) {
    const std::string& name = entry.first;
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const size_t end = name.find('.', prefix.size());
    const std::string idx =
        name.substr(prefix.size(), end == std::string::npos ? std::string::npos : end - prefix.size());
    if (idx.empty() || idx.size() > 9 || idx.find_first_not_of("0123456789") != std::string::npos) continue;
    const int64_t l = std::stoll(idx);
    if (l > top) top = l, example = name;
  }
  if (top >= L)
    throw ShapeMismatch(where + ": num_hidden_layers = " + std::to_string(L) + " but the weights hold layers 0.." +
                        std::to_string(top) + " (" + example + ")");
}

}  // namespace

Model load_hf(const std::string& dir) {
  Model m;
  m.config = load_hf_config(dir);
  const ModelConfig& c = m.config;

  // Which files: the index's weight_map when sharded, else every *.safetensors in the directory.
  std::vector<std::string> files;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index)) {
    require_regular_file(index.string(), "shard index");
    std::ifstream in(index);
    std::set<std::string> names;
    try {
      const json j = json::parse(in);
      for (const auto& [k, v] : j.at("weight_map").items()) names.insert(v.get<std::string>());
    } catch (const json::exception& e) {
      throw FormatError(index.string() + ": malformed index (" + e.what() + ")");
    }
    for (const auto& n : names) {
      // Shards are files of this directory: an absolute name or one leaving it (../x) is refused.
      const fs::path rel(n);
      bool leaves = n.empty() || rel.is_absolute() || rel.has_root_name();
      for (const auto& part : rel) leaves = leaves || part == "..";
      if (leaves)
        throw FormatError(index.string() + ": weight_map names the file '" + n +
                          "', which is outside the model directory");
      files.push_back((fs::path(dir) / n).string());
    }
  } else {
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
  }
  if (files.empty()) throw FormatError(dir + ": no *.safetensors files (PyTorch .bin checkpoints are not supported)");
  std::vector<SafetensorsFile> shards;
  for (const auto& f : files) {
    if (!fs::exists(f)) throw FormatError(index.string() + ": lists " + f + ", which does not exist");
    shards.emplace_back(f);
  }
  std::map<std::string, std::pair<const StTensor*, const std::string*>> all;
  for (const auto& s : shards)
    for (const auto& [name, t] : s.tensors())
      if (!all.emplace(name, std::make_pair(&t, &s.path())).second)
        throw FormatError(s.path() + ": tensor " + name + " also appears in another shard");

  check_layer_count(all, c.n_layers, (fs::path(dir) / "config.json").string());

  auto load = [&](const std::string& name, std::vector<int64_t> shape) {
    auto it = all.find(name);
    if (it == all.end()) throw FormatError(dir + ": missing tensor " + name);
    return to_f32(*it->second.first, shape, *it->second.second);
  };
  const int64_t dim = c.dim, qd = c.q_dim(), kvd = c.kv_dim(), hid = c.hidden_dim;
  m.embedding = load("model.embed_tokens.weight", {c.vocab_size, dim});
  m.layers.resize(static_cast<size_t>(c.n_layers));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    LayerWeights& w = m.layers[static_cast<size_t>(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    w.rms_att = load(p + "input_layernorm.weight", {dim});
    w.wq = load(p + "self_attn.q_proj.weight", {qd, dim});
    w.wk = load(p + "self_attn.k_proj.weight", {kvd, dim});
    w.wv = load(p + "self_attn.v_proj.weight", {kvd, dim});
    if (c.qkv_bias) {
      w.bq = load(p + "self_attn.q_proj.bias", {qd});
      w.bk = load(p + "self_attn.k_proj.bias", {kvd});
      w.bv = load(p + "self_attn.v_proj.bias", {kvd});
    }
    w.wo = load(p + "self_attn.o_proj.weight", {dim, qd});
    w.rms_ffn = load(p + "post_attention_layernorm.weight", {dim});
    w.w1 = load(p + "mlp.gate_proj.weight", {hid, dim});
    w.w3 = load(p + "mlp.up_proj.weight", {hid, dim});
    w.w2 = load(p + "mlp.down_proj.weight", {dim, hid});
  }
  m.rms_final = load("model.norm.weight", {dim});
  if (!c.tied_embeddings) m.lm_head = load("lm_head.weight", {c.vocab_size, dim});
  m.validate();
  return m;
}

}  // namespace kvsim::model
