// kvsim record --model M (--prompt TEXT | --prompts FILE.jsonl) [--generate N] --out F: runs the
// native model and streams its per-layer q, k, v (optionally q_pre, k_pre, o, and with --record
// vo_norm the per-(head, token) ||W_o,h v_i||_1, with --record kvzip KVzip's scores of the context) into
// a trace.
//
// --prompts FILE.jsonl: one JSON object per line, {"prompt": TEXT} or {"ids": [1, 410, ...]}, with
// optional "name" (sequence name), "source" (provenance), "generate" (overrides --generate) and
// "with_o" (true/false, overrides --with-o).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cuda/device.h"
#include "sim/base/error.h"
#include "sim/base/regular_file.h"
#include "tools/commands.h"
#include "tools/jsonl.h"
#include "tools/version.h"
#include "traces/model/recorder.h"

namespace kvsim::tools {

namespace {

// Progress on stderr: a line rewritten in place with ETA on a terminal, a line every 5 s otherwise.
class Progress {
 public:
  Progress(const char* what, int64_t total, bool quiet)
      : what_(what), total_(std::max<int64_t>(total, 1)), quiet_(quiet), tty_(::isatty(2) == 1),
        t0_(std::chrono::steady_clock::now()), last_(t0_) {}
  void add(int64_t n) {
    done_ += n;
    if (quiet_) return;
    const auto now = std::chrono::steady_clock::now();
    const double since = std::chrono::duration<double>(now - last_).count();
    if (since < (tty_ ? 0.2 : 5.0)) return;
    last_ = now;
    const double el = std::chrono::duration<double>(now - t0_).count();
    const double frac = static_cast<double>(done_) / static_cast<double>(total_);
    const double eta = frac > 0 ? el * (1 - frac) / frac : 0;
    std::fprintf(stderr, "%s%s: %5.1f%%  %.0f s elapsed, ETA %.0f s%s", tty_ ? "\r" : "", what_, 100 * frac, el, eta,
                 tty_ ? "   " : "\n");
    shown_ = tty_;
  }
  void clear() {
    if (shown_) std::fprintf(stderr, "\r%60s\r", "");
    shown_ = false;
  }

 private:
  const char* what_;
  int64_t total_, done_ = 0;
  bool quiet_, tty_, shown_ = false;
  std::chrono::steady_clock::time_point t0_, last_;
};

struct RecordArgs {
  std::string model, tokenizer, prompt, prompts, out, backend = "cpu", dtype = "float32";
  std::vector<std::string> record;  // --record items
  bool ids = false, compress = false, force = false, quiet = false;
  bool has_prompt = false, has_prompts = false;
  int64_t context_len = -1;
  model::RecordOptions opt;
};

// A prompt's context length must leave it at least one token of question: 1 <= n <= prompt tokens.
void check_context_len(model::PromptSpec& p, int64_t n, const std::string& where) {
  if (n == -1) return;
  if (n < 1 || n > static_cast<int64_t>(p.ids.size()))
    throw UsageError(where + ": context_len = " + std::to_string(n) + " is outside [1, " +
                     std::to_string(p.ids.size()) + "] (the prompt's tokens)");
  p.context_len = n;
}

std::vector<model::PromptSpec> read_prompts(const RecordArgs& a, const model::Tokenizer* tok) {
  auto encode = [&](const std::string& text, const std::string& where) {
    if (!tok) throw UsageError(where + ": a text prompt needs a tokenizer (--tokenizer)");
    return tok->encode(text, true);
  };
  std::vector<model::PromptSpec> out;
  if (a.has_prompt) {
    model::PromptSpec p;
    p.source = "--prompt";
    p.ids = a.ids ? model::parse_ids(a.prompt) : encode(a.prompt, "--prompt");
    check_context_len(p, a.context_len, "--context-len");
    out.push_back(std::move(p));
    return out;
  }
  for_each_jsonl_object("--prompts", a.prompts, [&](const nlohmann::json& j, const std::string& where) {
    model::PromptSpec p;
    try {
      if (j.contains("ids")) {
        for (const auto& v : j.at("ids")) p.ids.push_back(v.get<int32_t>());
      } else if (j.contains("prompt")) {
        p.ids = encode(j.at("prompt").get<std::string>(), where);
      } else if (j.contains("context") && j.contains("question")) {
        // The context (BOS first), then the question as its continuation: context_len marks the seam.
        p.ids = encode(j.at("context").get<std::string>(), where);
        p.context_len = static_cast<int64_t>(p.ids.size());
        const auto q = tok->encode(j.at("question").get<std::string>(), false);
        p.ids.insert(p.ids.end(), q.begin(), q.end());
      } else {
        throw FormatError(where +
                          ": needs \"prompt\" (text), \"ids\" (token ids) or \"context\" and "
                          "\"question\" (texts)");
      }
      if (j.contains("context_len"))
        check_context_len(p, j.at("context_len").get<int64_t>(), where);
      else if (p.context_len < 0)
        check_context_len(p, a.context_len, where + " (--context-len)");
      if (j.contains("needle")) {  // a needle in the prompt's haystack: its span (kvsim heads --method retrieval)
        const std::string needle = j.at("needle").get<std::string>();
        const auto span = model::find_needle(p.ids, tok ? tok->encode(needle, false) : std::vector<int32_t>{});
        if (!tok) throw UsageError(where + ": \"needle\" is text: give the model's tokenizer");
        if (span.first < 0)
          throw UsageError(where + ": the needle \"" + needle +
                           "\" is not in the prompt (no window holds over 90% of "
                           "its token ids)");
        p.needle_start = span.first, p.needle_end = span.second;
      }
      p.name = j.value("name", std::string());
      p.source = j.value("source", where);
      if (j.contains("generate")) p.generate = j.at("generate").get<int64_t>();
      if (j.contains("with_o")) p.output = j.at("with_o").get<bool>() ? 1 : 0;
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(where + ": " + e.what());
    }
    out.push_back(std::move(p));
  });
  if (out.empty()) throw UsageError("--prompts " + a.prompts + ": no prompts");
  return out;
}

// --record LIST: extra per-layer datasets derived from the model's weights (traces/FORMAT.md).
void parse_record_items(const std::vector<std::string>& items, model::RecordOptions& opt) {
  for (const std::string& it : items) {
    if (it == "vo_norm")
      opt.vo_norm = true;
    else if (it == "kvzip")
      opt.kvzip = true;
    else
      throw UsageError("--record: unknown item '" + it + "' (choose: vo_norm, kvzip)");
  }
}

void run_record(const RecordArgs& a_in) {
  RecordArgs a = a_in;
  parse_record_items(a.record, a.opt);
  if (a.has_prompt == a.has_prompts) throw UsageError("give one of --prompt TEXT or --prompts FILE.jsonl");
  const Backend backend = model::parse_runner_backend(a.backend);
  const traces::DType dtype = traces::parse_dtype(a.dtype);
  model::Sampler check(a.opt.sampling);  // validates the sampling options before loading anything
  const model::Model m = model::load_model(a.model);
  std::unique_ptr<model::Tokenizer> tok;
  if (!a.tokenizer.empty() || (a.has_prompt && !a.ids)) {
    tok = model::tokenizer_for_model(a.model, a.tokenizer);
  } else {
    try {  // ids-only prompts need none, but one next to the model still gives the trace its text
      tok = model::tokenizer_for_model(a.model, "");
    } catch (const UsageError&) {
    }
  }
  const std::vector<model::PromptSpec> prompts = read_prompts(a, tok.get());

  traces::WriterOptions w;
  w.compress = a.compress;
  w.overwrite = a.force;
  // The runner first: with --backend cuda it uploads the weights, and a failure leaves no .partial.
  model::Runner runner(m, backend);
  const std::string device = backend == Backend::cuda ? cuda::device_name() : "cpu";
  traces::TraceWriter writer(a.out, model::trace_header_for(m, dtype, "kvsim " KVSIM_VERSION, device), w);
  model::RecordStats total;
  int64_t units = 0;  // generated tokens + recorded tokens, over all prompts
  for (const auto& p : prompts) {
    const int64_t g = model::tokens_to_generate(m.config, p, a.opt);
    units += 2 * g + static_cast<int64_t>(p.ids.size());
  }
  Progress progress("kvsim record", units, a.quiet);
  model::RecordOptions opt = a.opt;
  opt.progress = [&progress](int64_t n) { progress.add(n); };
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < prompts.size(); ++i) {
    const model::RecordStats s = model::record_sequence(runner, tok.get(), prompts[i], opt, writer);
    progress.clear();
    total.tokens += s.tokens;
    total.generate_s += s.generate_s;
    total.record_s += s.record_s;
    total.write_s += s.write_s;
    if (!a.quiet)
      std::fprintf(stderr, "kvsim record: sequence %zu/%zu: P = %lld, T = %lld (generate %.2f s, record %.2f s)\n",
                   i + 1, prompts.size(), (long long)s.prompt_tokens, (long long)s.tokens, s.generate_s, s.record_s);
  }
  const auto f0 = std::chrono::steady_clock::now();
  writer.finish();
  const double finish_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - f0).count();
  const double all_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!a.quiet)
    std::fprintf(stderr,
                 "kvsim record: wrote %s: %zu sequences, %lld tokens in %.2f s (backend %s); "
                 "trace writing %.2f s = %.0f%% of the recording pass\n",
                 a.out.c_str(), prompts.size(), (long long)total.tokens, all_s, backend_name(backend),
                 total.write_s + finish_s,
                 100.0 * (total.write_s + finish_s) / std::max(total.record_s + finish_s, 1e-9));
}

}  // namespace

void add_record(CLI::App& app) {
  auto a = std::make_shared<RecordArgs>();
  CLI::App* c = app.add_subcommand("record", "Record a model's attention tensors (q, k, v) into a trace");
  c->add_option("--model", a->model, "llama2.c checkpoint (.bin) or Hugging Face directory")->required();
  c->add_option("--tokenizer", a->tokenizer,
                "tokenizer (.bin llama2.c or .model SentencePiece; default: next to the model)");
  c->add_option("--prompt", a->prompt, "one prompt (text; with --ids: token ids)");
  c->add_option("--prompts", a->prompts,
                "JSON lines: {\"prompt\": TEXT}, {\"ids\": [...]} or {\"context\": TEXT, \"question\": TEXT}, optional "
                "name, source, generate, with_o, context_len, needle (a text inside the prompt: its span is stored for "
                "kvsim heads --method retrieval)");
  c->add_option("--context-len", a->context_len,
                "the prompt's first N tokens are context, the rest its question (stored as the sequence's context_len; "
                "a JSON line's own context_len wins)");
  c->add_flag("--ids", a->ids, "--prompt is token ids");
  c->add_option("--generate", a->opt.generate, "continue each prompt by N generated tokens (-1: fill the context)")
      ->capture_default_str();
  c->add_option("--out", a->out, "output trace (.h5)")->required();
  c->add_option("--backend", a->backend,
                "cpu (omp when built, else ref), ref, omp, cuda (GPU; an error without a device), auto")
      ->capture_default_str();
  c->add_option("--dtype", a->dtype, "stored dtype: float32, float16, bfloat16")->capture_default_str();
  c->add_flag("--compress", a->compress, "gzip + shuffle compression");
  c->add_flag("--pre", a->opt.pre, "also record q_pre and k_pre (before RoPE)");
  c->add_flag("--with-o", a->opt.output, "also record o, the model's attention output (for self-checks)");
  c->add_option("--record", a->record,
                "also record these derived datasets (comma-separated): vo_norm = ||W_o,h v_i||_1 per query head and "
                "token [H, T], for criticalkv and defensivekv; kvzip = KVzip's context-reconstruction scores "
                "[Hkv, T] of the context (--kvzip-context), from its repeat passes, for the kvzip strategy")
      ->delimiter(',');
  c->add_option("--kvzip-chunk", a->opt.kvzip_chunk, "--record kvzip: context tokens per repeat pass (KVzip's chunk)")
      ->capture_default_str();
  c->add_option("--kvzip-context", a->opt.kvzip_context,
                "--record kvzip: score the first N tokens of each sequence (default: its context_len, else its prompt; "
                "a replay of kvzip cuts there: --prefill N)");
  c->add_option("--temperature", a->opt.sampling.temperature, "0: greedy")->capture_default_str();
  c->add_option("--top-p", a->opt.sampling.top_p, "nucleus sampling mass")->capture_default_str();
  c->add_option("--seed", a->opt.sampling.seed, "sampling seed")->capture_default_str();
  c->add_option("--block", a->opt.block, "tokens per recording forward call")->capture_default_str();
  c->add_flag("--force", a->force, "replace an existing output file");
  c->add_flag("--quiet", a->quiet, "no progress on stderr");
  c->callback([a, c] {
    a->has_prompt = c->count("--prompt") > 0;
    a->has_prompts = c->count("--prompts") > 0;
    run_record(*a);
    exit_status() = 0;
  });
}

}  // namespace kvsim::tools
