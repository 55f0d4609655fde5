#include "traces/model/model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numbers>

#include "sim/base/error.h"

namespace kvsim::model {

namespace {

void check_positive(const std::string& where, const char* name, int64_t v, int64_t max) {
  if (v < 1 || v > max)
    throw FormatError(where + ": " + name + " = " + std::to_string(v) + " is outside [1, " + std::to_string(max) + "]");
}

// The size, and every weight finite: a NaN or Inf weight would turn every logit into NaN.
void check_size(const std::string& where, const std::string& name, const std::vector<float>& t, int64_t expect) {
  if (static_cast<int64_t>(t.size()) != expect)
    throw ShapeMismatch(where + ": tensor " + name + " has " + std::to_string(t.size()) + " elements, expected " +
                        std::to_string(expect));
  const auto bad = std::find_if(t.begin(), t.end(), [](float x) { return !std::isfinite(x); });
  if (bad != t.end())
    throw NumericError(where + ": tensor " + name + ": non-finite weight " + std::to_string(*bad) + " at element " +
                       std::to_string(bad - t.begin()) + " of " + std::to_string(t.size()));
}

}  // namespace

void ModelConfig::validate(const std::string& where) const {
  check_positive(where, "dim", dim, 1 << 16);
  check_positive(where, "hidden_dim", hidden_dim, 1 << 18);
  check_positive(where, "n_layers", n_layers, 4096);
  check_positive(where, "n_heads", n_heads, 4096);
  check_positive(where, "n_kv_heads", n_kv_heads, 4096);
  check_positive(where, "head_dim", head_dim, 4096);
  check_positive(where, "vocab_size", vocab_size, 1 << 22);
  check_positive(where, "seq_len", seq_len, 1 << 24);
  if (n_heads % n_kv_heads != 0)
    throw FormatError(where + ": n_heads = " + std::to_string(n_heads) +
                      " is not a multiple of n_kv_heads = " + std::to_string(n_kv_heads));
  if (head_dim % 2 != 0 && rope_style != RopeStyle::none)
    throw FormatError(where + ": head_dim = " + std::to_string(head_dim) + " is odd; RoPE needs pairs");
  if (!inv_freq.empty() && static_cast<int64_t>(inv_freq.size()) != head_dim / 2)
    throw FormatError(where + ": " + std::to_string(inv_freq.size()) +
                      " RoPE frequencies for head_dim = " + std::to_string(head_dim));
  if (!(rope_theta > 0)) throw FormatError(where + ": rope_theta = " + std::to_string(rope_theta) + " must be > 0");
  if (!(norm_eps > 0)) throw FormatError(where + ": rms_norm_eps = " + std::to_string(norm_eps) + " must be > 0");
}

void Model::validate() const {
  const ModelConfig& c = config;
  c.validate(c.name);
  const std::string& w = c.name;
  check_size(w, "embedding", embedding, c.vocab_size * c.dim);
  if (static_cast<int64_t>(layers.size()) != c.n_layers)
    throw ShapeMismatch(w + ": " + std::to_string(layers.size()) + " layers, expected " + std::to_string(c.n_layers));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = layers[static_cast<size_t>(l)];
    const std::string p = "layers." + std::to_string(l) + ".";
    check_size(w, p + "rms_att", L.rms_att, c.dim);
    check_size(w, p + "wq", L.wq, c.q_dim() * c.dim);
    check_size(w, p + "wk", L.wk, c.kv_dim() * c.dim);
    check_size(w, p + "wv", L.wv, c.kv_dim() * c.dim);
    check_size(w, p + "wo", L.wo, c.dim * c.q_dim());
    check_size(w, p + "rms_ffn", L.rms_ffn, c.dim);
    check_size(w, p + "w1", L.w1, c.hidden_dim * c.dim);
    check_size(w, p + "w2", L.w2, c.dim * c.hidden_dim);
    check_size(w, p + "w3", L.w3, c.hidden_dim * c.dim);
    if (c.qkv_bias) {
      check_size(w, p + "bq", L.bq, c.q_dim());
      check_size(w, p + "bk", L.bk, c.kv_dim());
      check_size(w, p + "bv", L.bv, c.kv_dim());
    }
  }
  check_size(w, "rms_final", rms_final, c.dim);
  if (!c.tied_embeddings) check_size(w, "lm_head", lm_head, c.vocab_size * c.dim);
}

Model load_model(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) return load_hf(path);
  if (!fs::exists(path, ec))
    throw UsageError(path + ": model not found (expected a llama2.c .bin or a Hugging Face directory)");
  return load_llama2c(path);
}

std::vector<float> llama3_inv_freq(int64_t D, double theta, double factor, double low_freq_factor,
                                   double high_freq_factor, double original_max_position) {
  // transformers' _compute_llama3_parameters: long wavelengths are divided by `factor`, short ones
  // kept, and the band in between interpolated smoothly.
  std::vector<float> out(static_cast<size_t>(D / 2));
  const double low_freq_wavelen = original_max_position / low_freq_factor;
  const double high_freq_wavelen = original_max_position / high_freq_factor;
  for (int64_t i = 0; i < D / 2; ++i) {
    const double f = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(D));
    const double wavelen = 2.0 * std::numbers::pi / f;
    double r;
    if (wavelen < high_freq_wavelen) {
      r = f;
    } else if (wavelen > low_freq_wavelen) {
      r = f / factor;
    } else {
      const double smooth = (original_max_position / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
      r = (1.0 - smooth) * f / factor + smooth * f;
    }
    out[static_cast<size_t>(i)] = static_cast<float>(r);
  }
  return out;
}

}  // namespace kvsim::model
