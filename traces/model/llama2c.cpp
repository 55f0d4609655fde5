// llama2.c legacy checkpoints (../shared/models/README.md): 7 int32 header fields, then float32
// tensors in a fixed order. A negative vocab_size means the classifier is stored after the RoPE
// tables instead of being tied to the embedding.
#include <cstring>

#include "sim/base/error.h"
#include "traces/model/mapped_file.h"
#include "traces/model/model.h"

namespace kvsim::model {

Model load_llama2c(const std::string& path) {
  MappedFile f(path);
  const int64_t header_bytes = 7 * 4;
  if (f.size() < static_cast<uint64_t>(header_bytes))
    throw FormatError(path + ": " + std::to_string(f.size()) + " bytes, shorter than the 28-byte llama2.c header");
  int32_t h[7];
  std::memcpy(h, f.data(), sizeof h);

  Model m;
  ModelConfig& c = m.config;
  c.name = path;
  c.hf_architecture = "llama2.c";
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.vocab_size = h[5] < 0 ? -static_cast<int64_t>(h[5]) : h[5];
  c.tied_embeddings = h[5] > 0;
  c.seq_len = h[6];
  c.rope_style = RopeStyle::interleaved;
  c.rope_theta = 10000.0;
  c.norm_eps = 1e-5f;
  const std::string where = path + " (llama2.c header dim=" + std::to_string(h[0]) +
                            " hidden_dim=" + std::to_string(h[1]) + " n_layers=" + std::to_string(h[2]) +
                            " n_heads=" + std::to_string(h[3]) + " n_kv_heads=" + std::to_string(h[4]) +
                            " vocab_size=" + std::to_string(h[5]) + " seq_len=" + std::to_string(h[6]) + ")";
  if (c.n_heads < 1 || c.dim % c.n_heads != 0) throw FormatError(where + ": dim is not a multiple of n_heads");
  c.head_dim = c.dim / c.n_heads;
  c.validate(where);

  const int64_t L = c.n_layers, dim = c.dim, hid = c.hidden_dim, kv = c.kv_dim(), V = c.vocab_size;
  const int64_t floats = V * dim + L * dim + L * dim * dim + 2 * L * kv * dim + L * dim * dim + L * dim +
                         3 * L * hid * dim + dim + c.seq_len * c.head_dim + (c.tied_embeddings ? 0 : V * dim);
  const uint64_t expect = static_cast<uint64_t>(header_bytes + floats * 4);
  if (f.size() != expect)
    throw FormatError(where + ": file is " + std::to_string(f.size()) + " bytes but the header implies " +
                      std::to_string(expect) + (f.size() < expect ? " (truncated?)" : ""));

  const float* p = reinterpret_cast<const float*>(f.data() + header_bytes);  // mmap: page aligned + 28
  auto take = [&p](std::vector<float>& dst, int64_t n) {
    dst.resize(static_cast<size_t>(n));
    std::memcpy(dst.data(), p, static_cast<size_t>(n) * 4);
    p += n;
  };
  m.layers.resize(static_cast<size_t>(L));
  take(m.embedding, V * dim);
  for (auto& l : m.layers) take(l.rms_att, dim);
  for (auto& l : m.layers) take(l.wq, dim * dim);
  for (auto& l : m.layers) take(l.wk, kv * dim);
  for (auto& l : m.layers) take(l.wv, kv * dim);
  for (auto& l : m.layers) take(l.wo, dim * dim);
  for (auto& l : m.layers) take(l.rms_ffn, dim);
  for (auto& l : m.layers) take(l.w1, hid * dim);
  for (auto& l : m.layers) take(l.w2, dim * hid);
  for (auto& l : m.layers) take(l.w3, hid * dim);
  take(m.rms_final, dim);
  p += c.seq_len * c.head_dim;  // freq_cis_real, freq_cis_imag: unused, RoPE is recomputed
  if (!c.tied_embeddings) take(m.lm_head, V * dim);
  m.validate();
  return m;
}

}  // namespace kvsim::model
