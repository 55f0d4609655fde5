#include "traces/model/recorder.h"

#include <algorithm>
#include <chrono>
#include <set>

#include "sim/base/error.h"
#include "traces/model/kvzip.h"
#include "traces/model/vo_norm.h"

namespace kvsim::model {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

const char* rope_style_name(RopeStyle s) {
  switch (s) {
    case RopeStyle::interleaved: return "interleaved";
    case RopeStyle::half: return "half";
    case RopeStyle::none: return "none";
  }
  return "none";
}

}  // namespace

traces::TraceHeader trace_header_for(const Model& model, traces::DType dtype, const std::string& recorder,
                                     const std::string& device) {
  const ModelConfig& c = model.config;
  traces::TraceHeader h;
  h.model = c.name;
  h.architecture = "llama";
  h.n_layers = c.n_layers;
  h.n_heads = c.n_heads;
  h.n_kv_heads = c.n_kv_heads;
  h.head_dim = c.head_dim;
  h.vocab_size = c.vocab_size;
  h.rope_theta = c.rope_theta;
  h.rope_style = rope_style_name(c.rope_style);
  h.stored_dtype = dtype;
  h.recorder = recorder;
  h.device = device;
  h.synthetic = false;
  return h;
}

std::pair<int64_t, int64_t> find_needle(const std::vector<int32_t>& prompt, const std::vector<int32_t>& needle) {
  const std::set<int32_t> want(needle.begin(), needle.end());
  const size_t n = needle.size();
  if (want.empty()) return {-1, -1};
  for (size_t i = 0; i < prompt.size(); ++i) {
    std::set<int32_t> have(prompt.begin() + static_cast<std::ptrdiff_t>(i),
                           prompt.begin() + static_cast<std::ptrdiff_t>(std::min(prompt.size(), i + n)));
    size_t common = 0;
    for (int32_t id : want) common += have.count(id);
    if (static_cast<double>(common) / static_cast<double>(want.size()) > 0.9)
      return {static_cast<int64_t>(i), static_cast<int64_t>(std::min(prompt.size(), i + n))};
  }
  return {-1, -1};
}

int64_t tokens_to_generate(const ModelConfig& c, const PromptSpec& prompt, const RecordOptions& opt) {
  const int64_t P = static_cast<int64_t>(prompt.ids.size());
  const std::string what = prompt.name.empty() ? prompt.source : prompt.name;
  if (P < 1) throw UsageError(what + ": empty prompt (no tokens)");
  if (P > c.seq_len)
    throw UsageError(what + ": prompt of " + std::to_string(P) +
                     " tokens exceeds the context length seq_len = " + std::to_string(c.seq_len));
  int64_t n_gen = prompt.generate != -2 ? prompt.generate : opt.generate;
  if (n_gen == -1) n_gen = c.seq_len - P;
  if (n_gen < 0) throw UsageError(what + ": --generate = " + std::to_string(n_gen) + " must be >= 0 (or -1: fill)");
  if (P + n_gen > c.seq_len)
    throw UsageError(what + ": prompt " + std::to_string(P) + " + generate " + std::to_string(n_gen) +
                     " tokens exceed the context length seq_len = " + std::to_string(c.seq_len));
  return n_gen;
}

RecordStats record_sequence(Runner& runner, const Tokenizer* tok, const PromptSpec& prompt, const RecordOptions& opt,
                            traces::TraceWriter& writer) {
  const ModelConfig& c = runner.model().config;
  const int64_t P = static_cast<int64_t>(prompt.ids.size());
  const int64_t n_gen = tokens_to_generate(c, prompt, opt);

  RecordStats st;
  st.prompt_tokens = P;
  std::vector<int32_t> ids = prompt.ids;
  auto t0 = std::chrono::steady_clock::now();
  if (n_gen > 0) {  // pass 1: the continuation
    Sampler sampler(opt.sampling);
    runner.reset();
    const float* logits = runner.forward(ids.data(), P);
    for (int64_t s = 0; s < n_gen; ++s) {
      const int32_t next = sampler.next(logits, c.vocab_size);
      ids.push_back(next);
      if (s + 1 < n_gen) logits = runner.forward(&next, 1);
      if (opt.progress) opt.progress(1);
    }
  }
  st.generate_s = seconds_since(t0);
  const int64_t T = static_cast<int64_t>(ids.size());
  st.tokens = T;

  // The KVzip repeat passes run on the prompt's context before the recording pass resets the caches.
  std::vector<std::vector<float>> kvzip;
  const int64_t C = opt.kvzip_context >= 1 ? opt.kvzip_context : prompt.context_len >= 1 ? prompt.context_len : P;
  if (opt.kvzip) {
    const std::string what = prompt.name.empty() ? prompt.source : prompt.name;
    if (C >= T)
      throw UsageError(what + ": --record kvzip scores the first " + std::to_string(C) +
                       " tokens, which must be fewer than the sequence's " + std::to_string(T) +
                       " (a replay cuts there and decodes the rest): generate tokens or give --kvzip-context");
    if (tok == nullptr)
      throw UsageError(what +
                       ": --record kvzip needs the model's tokenizer (its repeat prompts are text): give "
                       "--tokenizer");
    if (opt.kvzip_chunk < 1) throw UsageError("--kvzip-chunk = " + std::to_string(opt.kvzip_chunk) + " must be >= 1");
    const std::vector<int32_t> context(ids.begin(), ids.begin() + C);
    kvzip = kvzip_scores(runner, context, kvzip_chunks(context, *tok, opt.kvzip_chunk), what);
  }

  traces::SequenceSpec spec;
  spec.name = prompt.name;
  spec.n_tokens = T;
  spec.prefill_len = P;
  spec.context_len = prompt.context_len;
  spec.needle_start = prompt.needle_start, spec.needle_end = prompt.needle_end;
  if (opt.kvzip) spec.kvzip_context = C;
  spec.source = prompt.source;
  spec.tokens = ids;
  if (tok) spec.text = tok->decode(ids);
  spec.kinds = {traces::Kind::q, traces::Kind::k, traces::Kind::v};
  if (opt.pre) {
    spec.kinds.push_back(traces::Kind::q_pre);
    spec.kinds.push_back(traces::Kind::k_pre);
  }
  const bool output = prompt.output >= 0 ? prompt.output == 1 : opt.output;
  if (output) spec.kinds.push_back(traces::Kind::o);
  if (opt.vo_norm) spec.kinds.push_back(traces::Kind::vo_norm);
  if (opt.kvzip) spec.kinds.push_back(traces::Kind::kvzip_score);

  // pass 2: record. The tap transposes [T, heads, D] blocks to the trace's [heads, T, D].
  t0 = std::chrono::steady_clock::now();
  const auto b0 = t0;
  writer.begin_sequence(spec);
  if (opt.kvzip) {  // [Hkv, T]: the context's scores, 0 after it
    const int64_t Hkv = c.n_kv_heads;
    std::vector<float> row(static_cast<size_t>(Hkv * T), 0.0f);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      for (int64_t kv = 0; kv < Hkv; ++kv)
        std::copy_n(kvzip[static_cast<size_t>(l)].data() + kv * C, C, row.data() + kv * T);
      writer.write(traces::Kind::kvzip_score, l, 0, Hkv, 0, T, row.data());
    }
  }
  st.write_s += seconds_since(b0);
  std::vector<float> buf, vo;
  const int64_t D = c.head_dim;
  auto put = [&](traces::Kind kind, int64_t layer, int64_t pos0, int64_t n_tok, int64_t heads, const float* x) {
    buf.resize(static_cast<size_t>(heads * n_tok * D));
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t t = 0; t < n_tok; ++t) std::copy_n(x + (t * heads + h) * D, D, buf.data() + (h * n_tok + t) * D);
    const auto w0 = std::chrono::steady_clock::now();
    writer.write(kind, layer, 0, heads, pos0, n_tok, buf.data());
    st.write_s += seconds_since(w0);
  };
  LayerTap tap = [&](const LayerTensors& lt) {
    put(traces::Kind::q, lt.layer, lt.pos0, lt.T, c.n_heads, lt.q);
    put(traces::Kind::k, lt.layer, lt.pos0, lt.T, c.n_kv_heads, lt.k);
    put(traces::Kind::v, lt.layer, lt.pos0, lt.T, c.n_kv_heads, lt.v);
    if (opt.pre) {
      put(traces::Kind::q_pre, lt.layer, lt.pos0, lt.T, c.n_heads, lt.q_pre);
      put(traces::Kind::k_pre, lt.layer, lt.pos0, lt.T, c.n_kv_heads, lt.k_pre);
    }
    if (output) put(traces::Kind::o, lt.layer, lt.pos0, lt.T, c.n_heads, lt.o);
    if (opt.vo_norm) {
      const Model& m = runner.model();
      vo.resize(static_cast<size_t>(c.n_heads * lt.T));
      vo_norm(m.layers[static_cast<size_t>(lt.layer)].wo.data(), lt.v, lt.T, c.n_heads, c.n_kv_heads, D, c.dim,
              vo.data());
      // A norm the trace cannot hold (traces/FORMAT.md "Values") fails here, not in every later reader.
      for (int64_t i = 0; i < c.n_heads * lt.T; ++i)
        if (!(vo[static_cast<size_t>(i)] <= traces::kMaxAbsValue))
          throw NumericError("layer " + std::to_string(lt.layer) + ": vo_norm " +
                             std::to_string(vo[static_cast<size_t>(i)]) + " at [head " + std::to_string(i / lt.T) +
                             ", token " + std::to_string(lt.pos0 + i % lt.T) +
                             "] is not finite or exceeds 65504, the largest value a trace holds");
      const auto w0 = std::chrono::steady_clock::now();
      writer.write(traces::Kind::vo_norm, lt.layer, 0, c.n_heads, lt.pos0, lt.T, vo.data());
      st.write_s += seconds_since(w0);
    }
  };
  runner.reset();
  TapKinds kinds;
  kinds.pre = opt.pre, kinds.output = output;
  // On cuda the tap runs on a writer thread while the GPU goes on with the next layers and blocks:
  // it must be done with `buf` and `st` before they go, also when an exception unwinds.
  struct TapFence {
    Runner& r;
    ~TapFence() {
      try {
        r.wait_taps();
      } catch (...) {  // the first error is already on its way out
      }
    }
  } fence{runner};
  const int64_t block = std::max<int64_t>(1, opt.block);
  for (int64_t t = 0; t < T; t += block) {
    runner.forward(ids.data() + t, std::min(block, T - t), false, tap, kinds);
    if (opt.progress) opt.progress(std::min(block, T - t));
  }
  runner.wait_taps();  // rethrows a failed write
  const auto e0 = std::chrono::steady_clock::now();
  writer.end_sequence();  // closes the datasets: chunks still cached are compressed and written here
  st.write_s += seconds_since(e0);
  st.record_s = seconds_since(t0);
  return st;
}

}  // namespace kvsim::model
