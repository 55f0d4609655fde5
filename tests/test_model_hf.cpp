// Hugging Face loader: stories260K converted to the HF layout (kvsim convert's save_hf, with the
// interleaved -> rotate-half row permutation) gives the llama2.c loader's logits; a seeded random
// Qwen2-style checkpoint (q/k/v biases, GQA, untied head, bf16) written here loads and runs.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "model_test_util.h"
#include "sim/base/half.h"
#include "traces/model/model.h"
#include "traces/model/runner.h"
#include "traces/model/safetensors.h"
#include "traces/model/tokenizer.h"

using namespace kvsim;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("kvsim_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::vector<float> logits_all(const model::Model& m, Backend b, const std::vector<int32_t>& ids) {
  model::Runner r(m, b);
  const float* p = r.forward(ids.data(), static_cast<int64_t>(ids.size()), true);
  return std::vector<float>(p, p + static_cast<int64_t>(ids.size()) * m.config.vocab_size);
}

}  // namespace

TEST_CASE("hf: stories260K converted to safetensors gives the llama2.c logits (max |diff| <= 1e-4)") {
  KVSIM_REQUIRE_MODELS();
  const model::Model a = model::load_llama2c(kvsim_test::stories_bin());
  const fs::path dir = temp_dir("hf260k");
  model::save_hf(a, dir.string());
  const model::Model b = model::load_hf(dir.string());
  CHECK(b.config.rope_style == RopeStyle::half);
  CHECK(b.config.tied_embeddings);
  CHECK(b.config.n_kv_heads == 4);
  model::Llama2cTokenizer tok(kvsim_test::stories_tok());
  const auto ids = tok.encode("Zoo animals like to eat. One day a big lion saw a small mouse.", true);
  const auto la = logits_all(a, Backend::ref, ids), lb = logits_all(b, Backend::ref, ids);
  // Acceptance threshold of the issue; the permutation only reorders rows, so the difference is
  // the rounding of cos/sin pairs applied in another order (observed: see the MESSAGE).
  double worst = 0;
  for (size_t i = 0; i < la.size(); ++i) worst = std::max(worst, static_cast<double>(std::abs(la[i] - lb[i])));
  MESSAGE("stories260K llama2.c vs HF layout: max |logit diff| = " << worst);
  CHECK(worst <= 1e-4);
  // A wrong permutation would leave RoPE pairs mismatched: the converted model must differ from
  // the same weights read with the interleaved pairing.
  model::Model wrong = b;
  wrong.config.rope_style = RopeStyle::interleaved;
  const auto lw = logits_all(wrong, Backend::ref, ids);
  double diff_wrong = 0;
  for (size_t i = 0; i < la.size(); ++i)
    diff_wrong = std::max(diff_wrong, static_cast<double>(std::abs(la[i] - lw[i])));
  CHECK(diff_wrong > 1e-2);
  fs::remove_all(dir);
}

TEST_CASE("hf: a seeded random Qwen2 checkpoint (biases, GQA, bf16, untied, 2 shards) written here loads and runs") {
  model::ModelConfig c;
  c.name = "random-qwen2";
  c.dim = 96;
  c.hidden_dim = 160;
  c.n_layers = 2;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 301;
  c.seq_len = 64;
  c.rope_theta = 1000000.0;
  c.rope_style = RopeStyle::half;
  c.norm_eps = 1e-6f;
  c.tied_embeddings = false;
  c.qkv_bias = true;
  model::Model m = model::random_model(c, 1234);
  for (auto& l : m.layers)  // larger biases so that dropping them would show
    for (auto* b : {&l.bq, &l.bk, &l.bv})
      for (auto& x : *b) x *= 50.0f;

  // The checkpoint as Qwen2 ships it: config.json by hand, weights in bf16.
  const fs::path dir = temp_dir("qwen2");
  {
    std::ofstream cfg(dir / "config.json");
    cfg << R"({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 96,
      "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2,
      "vocab_size": 301, "max_position_embeddings": 64, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
      "tie_word_embeddings": false, "hidden_act": "silu", "use_sliding_window": false, "sliding_window": 4096,
      "max_window_layers": 2, "rope_scaling": null, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2})";
  }
  std::vector<model::StOut> t;
  auto add = [&](const std::string& n, std::vector<int64_t> shape, const std::vector<float>& d) {
    t.push_back({n, std::move(shape), d.data()});
  };
  add("model.embed_tokens.weight", {301, 96}, m.embedding);
  for (int l = 0; l < 2; ++l) {
    const auto& w = m.layers[static_cast<size_t>(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {96}, w.rms_att);
    add(p + "self_attn.q_proj.weight", {96, 96}, w.wq);
    add(p + "self_attn.q_proj.bias", {96}, w.bq);
    add(p + "self_attn.k_proj.weight", {32, 96}, w.wk);
    add(p + "self_attn.k_proj.bias", {32}, w.bk);
    add(p + "self_attn.v_proj.weight", {32, 96}, w.wv);
    add(p + "self_attn.v_proj.bias", {32}, w.bv);
    add(p + "self_attn.o_proj.weight", {96, 96}, w.wo);
    add(p + "post_attention_layernorm.weight", {96}, w.rms_ffn);
    add(p + "mlp.gate_proj.weight", {160, 96}, w.w1);
    add(p + "mlp.up_proj.weight", {160, 96}, w.w3);
    add(p + "mlp.down_proj.weight", {96, 160}, w.w2);
  }
  add("model.norm.weight", {96}, m.rms_final);
  add("lm_head.weight", {301, 96}, m.lm_head);
  // sharded as large checkpoints are: two files and model.safetensors.index.json
  const size_t half = t.size() / 2;
  const std::vector<model::StOut> t1(t.begin(), t.begin() + static_cast<std::ptrdiff_t>(half)),
      t2(t.begin() + static_cast<std::ptrdiff_t>(half), t.end());
  model::write_safetensors((dir / "model-00001-of-00002.safetensors").string(), t1, model::StDType::bf16);
  model::write_safetensors((dir / "model-00002-of-00002.safetensors").string(), t2, model::StDType::bf16);
  {
    std::ofstream idx(dir / "model.safetensors.index.json");
    idx << "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {";
    for (size_t i = 0; i < t.size(); ++i)
      idx << (i ? ", " : "") << "\"" << t[i].name << "\": \"model-0000" << (i < half ? 1 : 2)
          << "-of-00002.safetensors\"";
    idx << "}}";
  }

  const model::Model loaded = model::load_model(dir.string());
  CHECK(loaded.config.hf_architecture == "Qwen2ForCausalLM");
  CHECK(loaded.config.qkv_bias);
  CHECK(!loaded.config.tied_embeddings);
  CHECK(loaded.config.norm_eps == doctest::Approx(1e-6));

  // Expected: the in-memory model with every weight rounded to bf16 (what the file holds).
  model::Model expect = m;
  auto round = [](std::vector<float>& v) {
    for (auto& x : v) x = bf16_to_f32(f32_to_bf16(x));
  };
  round(expect.embedding);
  round(expect.rms_final);
  round(expect.lm_head);
  for (auto& l : expect.layers)
    for (auto* v : {&l.rms_att, &l.wq, &l.wk, &l.wv, &l.bq, &l.bk, &l.bv, &l.wo, &l.rms_ffn, &l.w1, &l.w2, &l.w3})
      round(*v);
  expect.config.norm_eps = loaded.config.norm_eps;  // 1e-06 parsed as double then float, as here

  const std::vector<int32_t> ids = {1, 17, 300, 42, 42, 5, 99, 250, 3, 0, 7};
  const auto le = logits_all(expect, Backend::ref, ids), ll = logits_all(loaded, Backend::ref, ids);
  kvsim_test::check_close(ll.data(), le.data(), static_cast<int64_t>(le.size()), 0, 0, "loaded vs in-memory (exact)");
  CHECK(std::all_of(ll.begin(), ll.end(), [](float x) { return std::isfinite(x); }));
  // the biases are read and used: without them the logits move
  model::Model nobias = loaded;
  for (auto& l : nobias.layers)
    for (auto* b : {&l.bq, &l.bk, &l.bv}) std::fill(b->begin(), b->end(), 0.0f);
  const auto ln = logits_all(nobias, Backend::ref, ids);
  double moved = 0;
  for (size_t i = 0; i < ln.size(); ++i) moved = std::max(moved, static_cast<double>(std::abs(ln[i] - ll[i])));
  CHECK(moved > 1e-3);
  if (backend_available(Backend::omp)) {
    const auto lo = logits_all(loaded, Backend::omp, ids);
    kvsim_test::check_close(lo.data(), ll.data(), static_cast<int64_t>(ll.size()), 1e-5, 1e-4, "omp vs ref");
  }
  fs::remove_all(dir);
}

TEST_CASE("hf: Llama-3 rope_scaling frequencies at the band edges (hand-computed)") {
  // theta 500000, D = 128, factor 8, low 1, high 4, original 8192: pair 0 has wavelength 2*pi,
  // far below 8192/4, so it is unchanged (1.0); pair 63 has wavelength > 8192, so it is divided by 8.
  const auto f = model::llama3_inv_freq(128, 500000.0, 8.0, 1.0, 4.0, 8192.0);
  REQUIRE(f.size() == 64);
  CHECK(f[0] == doctest::Approx(1.0));
  CHECK(f[63] == doctest::Approx(std::pow(500000.0, -126.0 / 128.0) / 8.0));
}

TEST_CASE("hf: config.json variants: Llama-3 rope_scaling, Mistral sliding window, float16 weights") {
  model::ModelConfig c;
  c.name = "random-llama3";
  c.dim = 64;
  c.hidden_dim = 96;
  c.n_layers = 1;
  c.n_heads = 4;
  c.n_kv_heads = 1;
  c.head_dim = 16;
  c.vocab_size = 50;
  c.seq_len = 64;
  c.rope_theta = 500000.0;
  c.rope_style = RopeStyle::half;
  c.tied_embeddings = true;
  const model::Model m = model::random_model(c, 5);
  const fs::path dir = temp_dir("variants");
  model::save_hf(m, dir.string(), "float16");
  auto patch = [&](const std::string& arch, const std::string& extra) {
    std::ifstream in(dir / "config.json");
    std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    s.replace(s.find("LlamaForCausalLM"), 16, arch);
    s.insert(s.rfind('}'), extra);
    std::ofstream(dir / "config.json") << s;
  };
  patch("LlamaForCausalLM", R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
      "high_freq_factor": 4.0, "original_max_position_embeddings": 32})");
  const model::Model l3 = model::load_hf(dir.string());
  CHECK(l3.config.inv_freq == model::llama3_inv_freq(16, 500000.0, 8.0, 1.0, 4.0, 32.0));
  // float16 weights: what the file holds is the fp16 rounding of the random weights
  CHECK(l3.layers[0].wq[3] == f16_to_f32(f32_to_f16(m.layers[0].wq[3])));
  model::Runner r(l3, Backend::ref);
  const std::vector<int32_t> ids = {1, 2, 3, 49};
  const float* lg = r.forward(ids.data(), 4);
  CHECK(std::isfinite(lg[0]));

  model::save_hf(m, dir.string(), "float32");
  patch("MistralForCausalLM", R"(, "sliding_window": 16)");
  const model::Model mi = model::load_hf(dir.string());
  CHECK(mi.config.seq_len == 16);  // capped so attention stays exact (no sliding window in the runner)
  CHECK(mi.config.inv_freq.empty());
  fs::remove_all(dir);
}
