// kvsim ppl --model M (--text F | --prompt TEXT | --ids IDS) [--strategy SPEC ...] [--prefill P]
//           [--max-tokens N] [--backend cpu|ref|omp] [--json] [--quiet]: perplexity of the text's
// tokens P..T-1 with each strategy managing the live model's KV cache (traces/model/perplexity.h
// defines it), against the full cache (always the first row).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "sim/base/error.h"
#include "sim/base/regular_file.h"
#include "sim/strategies/strategy.h"
#include "tools/commands.h"
#include "tools/progress.h"
#include "traces/model/model.h"
#include "traces/model/perplexity.h"
#include "traces/model/runner.h"
#include "traces/model/strategy_cache.h"
#include "traces/model/tokenizer.h"

namespace kvsim::tools {

namespace {

struct PplArgs {
  std::string model, tokenizer, text, prompt, ids, backend = "cpu", protocol = "evict";
  std::vector<std::string> strategies;
  int64_t prefill = -1, max_tokens = -1;
  bool no_bos = false, json = false, quiet = false, per_token = false;
};

std::string read_text_file(const std::string& path) {
  require_regular_file(path, "--text");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError("--text " + path + ": cannot open");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The token ids to score: from --ids as given, or the tokenized --text / --prompt (BOS first).
std::vector<int32_t> input_ids(const PplArgs& a) {
  const int n_inputs = int(!a.text.empty()) + int(!a.prompt.empty()) + int(!a.ids.empty());
  if (n_inputs != 1) throw UsageError("give exactly one of --text FILE, --prompt TEXT or --ids IDS");
  std::vector<int32_t> ids;
  if (!a.ids.empty()) {
    ids = model::parse_ids(a.ids);
  } else {
    const auto tok = model::tokenizer_for_model(a.model, a.tokenizer);
    ids = tok->encode(a.text.empty() ? a.prompt : read_text_file(a.text), !a.no_bos);
  }
  if (a.max_tokens == 0 || a.max_tokens < -1)
    throw UsageError("--max-tokens " + std::to_string(a.max_tokens) + " must be >= 1");
  if (a.max_tokens > 0 && static_cast<int64_t>(ids.size()) > a.max_tokens)
    ids.resize(static_cast<size_t>(a.max_tokens));
  return ids;
}

nlohmann::json num(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); }

nlohmann::json to_json(const PplArgs& a, const model::ModelConfig& c, Backend b,
                       const std::vector<model::PerplexityResult>& rs, const std::vector<int32_t>& ids) {
  nlohmann::json j;
  j["model"] = a.model;
  j["T"] = rs.front().T;
  j["prefill"] = rs.front().P;
  j["protocol"] = a.protocol;
  j["n_predicted"] = rs.front().n_predicted;
  j["shape"] = {{"L", c.n_layers}, {"H", c.n_heads}, {"Hkv", c.n_kv_heads}, {"D", c.head_dim}};
  j["backend"] = backend_name(b);
  j["results"] = nlohmann::json::array();
  for (const auto& r : rs) {
    const model::GreedyAgreement g = model::greedy_agreement(rs.front(), r);
    nlohmann::json x = {
        {"strategy", r.strategy},
        {"spec", r.spec},
        {"params", r.params},
        {"ppl", num(r.ppl)},
        {"delta_ppl", num(r.ppl - rs.front().ppl)},
        {"nll", num(r.nll)},
        {"ratio", num(r.mean_ratio)},
        {"greedy_agreement", g.fraction},
        {"first_divergence", g.first_divergence < 0 ? nlohmann::json(nullptr) : nlohmann::json(g.first_divergence)},
        {"seconds", r.seconds}};
    if (a.per_token) {
      nlohmann::json nll = nlohmann::json::array();
      for (double v : r.token_nll) nll.push_back(num(v));
      x["token_nll"] = std::move(nll);
      x["argmax"] = r.argmax;
    }
    j["results"].push_back(std::move(x));
  }
  if (a.per_token) j["ids"] = ids;  // token_nll[i] and argmax[i] belong to position prefill + i
  return j;
}

void print_table(const PplArgs& a, const model::ModelConfig& c, Backend b,
                 const std::vector<model::PerplexityResult>& rs) {
  const auto& f = rs.front();
  std::printf("model %s: T=%lld P=%lld (%lld predicted tokens), L=%lld H=%lld Hkv=%lld D=%lld, backend %s\n",
              a.model.c_str(), (long long)f.T, (long long)f.P, (long long)f.n_predicted, (long long)c.n_layers,
              (long long)c.n_heads, (long long)c.n_kv_heads, (long long)c.head_dim, backend_name(b));
  // "Δ" is two bytes in UTF-8 and one column: widths one wider than the rows'
  std::printf("%-36s %10s %11s %9s %8s %6s %6s %8s\n", "strategy", "ppl", "\xce\x94ppl", "\xce\x94ppl%", "nll", "ratio",
              "agree", "seconds");
  for (const auto& r : rs) {
    const std::string name = r.spec.size() > 36 ? r.spec.substr(0, 33) + "..." : r.spec;
    std::printf("%-36s %10.4f %+10.4f %+7.2f%% %8.5f %6.3f %6.3f %8.2f\n", name.c_str(), r.ppl, r.ppl - f.ppl,
                100.0 * (r.ppl / f.ppl - 1.0), r.nll, r.mean_ratio, model::greedy_agreement(f, r).fraction, r.seconds);
  }
}

int run_ppl(const PplArgs& a) {
  const Backend backend = model::parse_runner_backend(a.backend);
  std::vector<std::unique_ptr<Strategy>> strategies;  // parsed first: a bad spec fails before any loading
  for (const auto& s : a.strategies)
    if (s != "full") strategies.push_back(make_strategy(s));
  const model::Model m = model::load_model(a.model);
  const std::vector<int32_t> ids = input_ids(a);
  const int64_t T = static_cast<int64_t>(ids.size());
  if (T > m.config.seq_len)
    throw UsageError("input: " + std::to_string(T) + " tokens exceed the context length seq_len = " +
                     std::to_string(m.config.seq_len) + " of " + a.model + " (use --max-tokens)");
  const int64_t P = a.prefill >= 0 ? a.prefill : std::max<int64_t>(1, T / 4);
  if (P < 1 || P >= T)
    throw UsageError("--prefill " + std::to_string(P) + " must satisfy 1 <= P < T = " + std::to_string(T) +
                     " (the input has " + std::to_string(T) + " tokens)");
  const Protocol protocol = parse_protocol(a.protocol);
  for (const auto& s : strategies) model::check_strategy_fits(*s, m.config, T, P, protocol, &m);

  Progress progress("kvsim ppl", "tokens", T * static_cast<int64_t>(strategies.size() + 1), a.quiet);
  auto advance = [&progress](int64_t n) { progress.advance(n); };
  std::vector<model::PerplexityResult> rs;
  rs.push_back(model::perplexity(m, ids, P, nullptr, backend, advance));
  for (const auto& s : strategies) rs.push_back(model::perplexity(m, ids, P, s.get(), backend, advance, protocol));
  progress.finish();
  if (a.json)
    std::printf("%s\n", json_text(to_json(a, m.config, backend, rs, ids)).c_str());
  else
    print_table(a, m.config, backend, rs);
  return 0;
}

}  // namespace

void add_ppl(CLI::App& app) {
  auto a = std::make_shared<PplArgs>();
  const std::string names = strategy_names_help();
  CLI::App* c = app.add_subcommand("ppl", "Perplexity with cache strategies managing the live model's KV cache");
  c->footer(
      "The first P tokens run as one prompt over the exact cache, then each strategy compresses and every\n"
      "later token runs alone through it (replay semantics, design.md §3). Tokens P..T-1 are scored, each\n"
      "by the logits of the position before it; `full` (the plain cache) is always the first row.\n"
      "ratio: the replay's memory ratio, bytes / fp16 full cache, averaged over layers, KV heads and steps.\n"
      "agree: greedy agreement, the fraction of predicted positions whose argmax equals the full cache's\n"
      "(--json adds first_divergence, the first position where they differ).");
  c->add_option("--model", a->model, "llama2.c checkpoint (.bin) or Hugging Face directory")->required();
  c->add_option("--tokenizer", a->tokenizer,
                "tokenizer (.bin llama2.c or .model SentencePiece; default: next to the model)");
  c->add_option("--text", a->text, "text file to score (tokenized with BOS in front)");
  c->add_option("--prompt", a->prompt, "text to score, given inline");
  c->add_option("--ids", a->ids, "token ids to score as given, e.g. \"1 410 469 347\" (no tokenizer needed)");
  c->add_flag("--no-bos", a->no_bos, "do not put BOS in front of the tokenized text");
  c->add_option(
      "--strategy", a->strategies,
      "strategy spec name:key=value,... or strategy+codec (repeatable; `full` is always run); names: " + names);
  c->add_option("--prefill", a->prefill, "prefill length P, 1 <= P < T (default: T/4, at least 1)")
      ->check(not_negative);
  c->add_option("--protocol", a->protocol,
                "evict, prefill or sparse: how each strategy's cache meets decoding, as in kvsim run")
      ->capture_default_str();
  c->add_option("--max-tokens", a->max_tokens,
                "score only the first N tokens of the input (default: all; must fit the context)");
  c->add_option("--backend", a->backend, "cpu, ref, omp or auto (cpu/auto: omp when built with OpenMP)")
      ->capture_default_str();
  c->add_flag("--json", a->json, "print JSON instead of a table");
  c->add_flag("--per-token", a->per_token,
              "with --json: each run's token_nll and argmax per predicted position, and the ids scored");
  c->add_flag("--quiet", a->quiet, "no progress on stderr");
  c->callback([a] { exit_status() = run_ppl(*a); });
}

}  // namespace kvsim::tools
