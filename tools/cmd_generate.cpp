// kvsim generate --model M --prompt TEXT --steps N [--ids]: greedy or sampled text from the
// native runner (a llama2.c checkpoint or a Hugging Face directory).
#include <chrono>
#include <cstdio>

#include "sim/base/error.h"
#include "sim/kernels/backend.h"
#include "tools/commands.h"
#include "traces/model/model.h"
#include "traces/model/runner.h"
#include "traces/model/sampler.h"
#include "traces/model/tokenizer.h"

namespace kvsim::tools {

namespace {

struct GenerateArgs {
  std::string model, tokenizer, prompt, backend = "cpu";
  int64_t steps = 64;
  bool ids = false, quiet = false, no_bos = false;
  model::SamplerOptions sampling;
};

void run_generate(const GenerateArgs& a) {
  if (a.steps < 0) throw UsageError("--steps = " + std::to_string(a.steps) + " must be >= 0");
  const Backend backend = model::parse_runner_backend(a.backend);
  model::Sampler sampler(a.sampling);
  const model::Model m = model::load_model(a.model);
  std::unique_ptr<model::Tokenizer> tok;
  if (!a.ids || !a.tokenizer.empty()) tok = model::tokenizer_for_model(a.model, a.tokenizer);
  std::vector<int32_t> prompt = a.ids ? model::parse_ids(a.prompt) : tok->encode(a.prompt, !a.no_bos);
  if (a.ids && prompt.empty()) prompt.push_back(1);  // BOS
  const int64_t ctx = m.config.seq_len;
  if (static_cast<int64_t>(prompt.size()) > ctx)
    throw UsageError("--prompt: " + std::to_string(prompt.size()) +
                     " tokens exceed the context length seq_len = " + std::to_string(ctx) + " of " + a.model);
  if (tok && tok->vocab_size() != m.config.vocab_size && !a.quiet)
    std::fprintf(stderr, "kvsim generate: warning: tokenizer has %lld tokens, model %lld\n",
                 (long long)tok->vocab_size(), (long long)m.config.vocab_size);

  model::Runner runner(m, backend);
  const auto t0 = std::chrono::steady_clock::now();
  const float* logits = runner.forward(prompt.data(), static_cast<int64_t>(prompt.size()));
  std::vector<int32_t> out;
  int32_t prev = prompt.back();
  if (!a.ids && tok) std::fputs(tok->decode(prompt).c_str(), stdout);
  for (int64_t s = 0; s < a.steps && runner.pos() <= ctx; ++s) {
    const int32_t next = sampler.next(logits, m.config.vocab_size);
    out.push_back(next);
    if (a.ids) {
      std::printf(s == 0 ? "%d" : " %d", next);
    } else {
      std::fputs(tok->piece(prev, next).c_str(), stdout);
      std::fflush(stdout);
    }
    prev = next;
    if (s + 1 == a.steps || runner.pos() == ctx) break;
    logits = runner.forward(&next, 1);
  }
  std::printf("\n");
  std::fflush(stdout);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!a.quiet)
    std::fprintf(
        stderr, "kvsim generate: %zu prompt + %zu generated tokens in %.3f s (%.1f tok/s, backend %s)%s\n",
        prompt.size(), out.size(), secs, static_cast<double>(out.size()) / std::max(secs, 1e-9), backend_name(backend),
        runner.pos() == ctx && static_cast<int64_t>(out.size()) < a.steps ? ", stopped at the context length" : "");
}

}  // namespace

void add_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* c = app.add_subcommand("generate", "Generate text with the native runner (greedy unless --temperature)");
  c->add_option("--model", a->model, "llama2.c checkpoint (.bin) or Hugging Face directory")->required();
  c->add_option("--tokenizer", a->tokenizer,
                "tokenizer (.bin llama2.c or .model SentencePiece; default: next to the model)");
  c->add_option("--prompt", a->prompt, "prompt text (with --ids: token ids, e.g. \"1 410 469\")");
  c->add_option("--steps", a->steps, "tokens to generate")->capture_default_str();
  c->add_flag("--ids", a->ids, "the prompt is token ids and the output is token ids");
  c->add_flag("--no-bos", a->no_bos, "do not put BOS in front of the encoded prompt");
  c->add_option("--temperature", a->sampling.temperature, "0: greedy")->capture_default_str();
  c->add_option("--top-p", a->sampling.top_p, "nucleus sampling mass")->capture_default_str();
  c->add_option("--seed", a->sampling.seed, "sampling seed")->capture_default_str();
  c->add_option("--backend", a->backend, "cpu, ref, omp, cuda or auto (cuda when a device can run it, else cpu)")
      ->capture_default_str();
  c->add_flag("--quiet", a->quiet, "no timing line on stderr");
  c->callback([a] {
    run_generate(*a);
    exit_status() = 0;
  });
}

}  // namespace kvsim::tools
