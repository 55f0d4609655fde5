// kvsim prefix (--workload F.jsonl | --synth KIND:...) (--shape NAME | --trace F | --model M)
//              --capacity LIST [--codec SPEC ...] [--ttl SECONDS] [--block N] [--json]: a KV prefix
// cache (radix tree over blocks, TTL then LRU, sim/prefix_cache.h) over a request workload, one
// result per (codec, capacity); with --model also the measured reuse (traces/model/prefix_reuse.h).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "sim/base/error.h"
#include "sim/base/spec.h"
#include "sim/prefix_cache.h"
#include "sim/prefix_workload.h"
#include "sim/strategies/quant_codecs.h"
#include "tools/capacity.h"
#include "tools/commands.h"
#include "tools/jsonl.h"
#include "traces/model/model.h"
#include "traces/model/prefix_reuse.h"
#include "traces/model/runner.h"
#include "traces/model/tokenizer.h"
#include "traces/reader.h"
#include "traces/synth.h"

namespace kvsim::tools {

namespace {

struct PrefixArgs {
  std::string workload, synth, shape, trace, model, tokenizer, capacity, write_workload, backend = "cpu";
  std::vector<std::string> codecs;
  double ttl = std::numeric_limits<double>::infinity();
  int64_t block = 16, bpt_tokens = 4096, model_requests = 32, continuation = 16;
  bool json = false;
};

// Where the head shape comes from: L, Hkv, D and the vocabulary.
struct HeadShape {
  std::string source;
  int64_t L = 0, Hkv = 0, D = 0, vocab = 0;
};

// "256MiB" -> 268435456; units B, kB (or KB)/MB/GB/TB (powers of 1000), KiB/MiB/GiB/TiB (powers of 1024).
std::vector<double> parse_capacities(const std::string& list) {
  std::vector<double> out;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t comma = list.find(',', start);
    const std::string item = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    out.push_back(static_cast<double>(parse_size(item, "--capacity")));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

HeadShape head_shape(const PrefixArgs& a, const model::Model* m) {
  const int n = int(!a.shape.empty()) + int(!a.trace.empty()) + int(!a.model.empty());
  if (n != 1) throw UsageError("give exactly one of --shape NAME, --trace F or --model M (the head shape)");
  HeadShape h;
  if (m) {
    const auto& c = m->config;
    h = {"model " + a.model, c.n_layers, c.n_kv_heads, c.head_dim, c.vocab_size};
  } else if (!a.trace.empty()) {
    const traces::TraceReader r(a.trace);
    const auto& c = r.header();
    h = {"trace " + a.trace, c.n_layers, c.n_kv_heads, c.head_dim, c.vocab_size};
  } else {
    const auto& s = traces::find_synth_shape(a.shape);
    h = {"shape " + a.shape, s.n_layers, s.n_kv_heads, s.head_dim, s.vocab_size};
  }
  return h;
}

// tokenizer() is asked only for "text" lines (an ids-only workload needs none).
std::vector<PrefixRequest> read_workload(const std::string& path,
                                         const std::function<const model::Tokenizer*()>& tokenizer) {
  std::vector<PrefixRequest> out;
  int64_t with_arrival = 0;
  for_each_jsonl_object("--workload", path, [&](const nlohmann::json& j, const std::string& where) {
    PrefixRequest q;
    try {
      if (j.contains("ids")) {
        for (const auto& v : j.at("ids")) q.ids.push_back(v.get<int32_t>());
      } else if (j.contains("text")) {
        const model::Tokenizer* tok = tokenizer();
        if (!tok) throw UsageError(where + ": \"text\" needs a tokenizer (--model or --tokenizer)");
        q.ids = tok->encode(j.at("text").get<std::string>(), true);
      } else {
        throw FormatError(where + ": needs \"ids\" (token ids) or \"text\"");
      }
      if (j.contains("arrival")) {
        q.arrival = j.at("arrival").get<double>();
        if (!std::isfinite(q.arrival) || q.arrival < 0)
          throw FormatError(where + ": arrival " + std::to_string(q.arrival) + " must be >= 0 seconds");
        ++with_arrival;
      } else {
        q.arrival = static_cast<double>(out.size());
      }
      if (j.contains("session"))
        q.session = j.at("session").is_string() ? j.at("session").get<std::string>() : j.at("session").dump();
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(where + ": " + e.what());
    }
    if (q.ids.empty()) throw FormatError(where + ": a request with no tokens");
    for (int32_t id : q.ids)
      if (id < 0) throw FormatError(where + ": token id " + std::to_string(id) + " is negative");
    if (out.size() > 0 && q.arrival < out.back().arrival)
      throw FormatError(where + ": arrival " + std::to_string(q.arrival) + " s is before the previous request's (" +
                        std::to_string(out.back().arrival) + " s): requests must be in arrival order");
    out.push_back(std::move(q));
  });
  if (out.empty()) throw UsageError("--workload " + path + ": no requests");
  if (with_arrival != 0 && with_arrival != static_cast<int64_t>(out.size()))
    throw FormatError(path + ": " + std::to_string(with_arrival) + " of " + std::to_string(out.size()) +
                      " requests have \"arrival\": give it on every line or on none");
  return out;
}

void write_workload(const std::string& path, const std::vector<PrefixRequest>& w) {
  std::ofstream out(path + ".partial");
  for (const auto& q : w) {
    nlohmann::json j = {{"ids", q.ids}, {"arrival", q.arrival}};
    if (!q.session.empty()) j["session"] = q.session;
    out << j.dump() << "\n";
  }
  out.close();
  if (!out || std::rename((path + ".partial").c_str(), path.c_str()) != 0)
    throw IoError("--write-workload " + path + ": cannot write");
}

struct CodecRun {
  std::string spec;
  std::unique_ptr<Codec> codec;  // null: fp16 (the identity codec)
  double bytes_per_token = 0;    // all layers and KV heads
  const Codec& get() const { return codec ? *codec : identity_codec(); }
};

CodecRun make_codec_run(const std::string& spec, const HeadShape& h, int64_t n_tokens) {
  CodecRun c;
  c.spec = spec;
  if (spec != "fp16" && spec != "identity") {
    const StrategySpec s = parse_spec(spec);
    if (!is_codec_name(s.name)) {
      std::string list = "fp16";
      for (const auto& n : codec_names()) list += ", " + n;
      throw UsageError("--codec " + spec + ": unknown codec '" + s.name + "' (valid: " + list + ")");
    }
    c.codec = make_codec(s);
  }
  c.bytes_per_token = static_cast<double>(h.L * h.Hkv) * codec_bytes_per_token(c.get(), h.D, n_tokens);
  return c;
}

nlohmann::json bytes_over_time(const std::vector<PrefixRequest>& w, const PrefixStats& s) {
  nlohmann::json out = nlohmann::json::array();
  const size_t n = s.served.size(), step = std::max<size_t>(1, n / 200);
  for (size_t i = 0; i < n; i += step) out.push_back({w[i].arrival, s.served[i].bytes_after});
  if (n > 0 && (n - 1) % step != 0) out.push_back({w[n - 1].arrival, s.served[n - 1].bytes_after});
  return out;
}

nlohmann::json reuse_json(const model::PrefixReuseResult& r) {
  return {{"requests", r.requests},
          {"hit_requests", r.hit_requests},
          {"hit_tokens", r.hit_tokens},
          {"prompt_tokens", r.prompt_tokens},
          {"prefill_seconds_uncached", r.seconds_uncached},
          {"prefill_seconds_cached", r.seconds_cached},
          {"prefill_seconds_saved", r.seconds_uncached - r.seconds_cached},
          {"greedy_agreement", r.greedy_agreement()},
          {"positions", r.positions},
          {"ppl_uncached", r.positions > 0 ? nlohmann::json(std::exp(r.nll_uncached)) : nlohmann::json(nullptr)},
          {"ppl_cached", r.positions > 0 ? nlohmann::json(std::exp(r.nll_cached)) : nlohmann::json(nullptr)},
          {"max_logit_diff", r.max_logit_diff}};
}

void print_table(const nlohmann::json& j, const HeadShape& h, const PrefixArgs& a) {
  char ttl[32] = "none";
  if (!std::isinf(a.ttl)) std::snprintf(ttl, sizeof ttl, "%g s", a.ttl);
  std::printf("workload %s: %zu requests, %lld tokens, %zu sessions; %s (L=%lld Hkv=%lld D=%lld); block %lld, ttl %s\n",
              j["workload"].get<std::string>().c_str(), (size_t)j["requests"].get<int64_t>(),
              (long long)j["tokens"].get<int64_t>(), (size_t)j["sessions"].get<int64_t>(), h.source.c_str(),
              (long long)h.L, (long long)h.Hkv, (long long)h.D, (long long)a.block, ttl);
  std::printf("%-22s %11s %14s %8s %8s %12s %14s %9s %9s\n", "codec", "bytes/tok", "capacity", "tok_hit", "req_hit",
              "tokens_saved", "peak_bytes", "evict_ttl", "evict_lru");
  for (const auto& r : j["results"]) {
    const std::string name = r["codec"].get<std::string>().substr(0, 22);
    std::printf("%-22s %11.2f %14.0f %8.4f %8.4f %12lld %14.0f %9lld %9lld\n", name.c_str(),
                r["bytes_per_token"].get<double>(), r["capacity_bytes"].get<double>(),
                r["token_hit_rate"].get<double>(), r["request_hit_rate"].get<double>(),
                (long long)r["prefill_tokens_saved"].get<int64_t>(), r["peak_bytes"].get<double>(),
                (long long)r["evictions_ttl"].get<int64_t>(), (long long)r["evictions_lru"].get<int64_t>());
    if (r.contains("model") && r["model"]["hit_requests"].get<int64_t>() == 0) {
      std::printf("  model: 0 of %lld requests hit\n", (long long)r["model"]["requests"].get<int64_t>());
    } else if (r.contains("model")) {
      const auto& x = r["model"];
      std::printf(
          "  model: %lld of %lld requests hit; prefill %.4f s -> %.4f s (saved %.4f s); greedy agreement %.4f;"
          " ppl %.4f -> %.4f; max |logit diff| %.3g\n",
          (long long)x["hit_requests"].get<int64_t>(), (long long)x["requests"].get<int64_t>(),
          x["prefill_seconds_uncached"].get<double>(), x["prefill_seconds_cached"].get<double>(),
          x["prefill_seconds_saved"].get<double>(), x["greedy_agreement"].get<double>(),
          x["ppl_uncached"].get<double>(), x["ppl_cached"].get<double>(), x["max_logit_diff"].get<double>());
    }
  }
}

int run_prefix(const PrefixArgs& a) {
  if (int(!a.workload.empty()) + int(!a.synth.empty()) != 1)
    throw UsageError("give exactly one of --workload F.jsonl or --synth KIND[:key=value,...]");
  if (a.block < 1) throw UsageError("--block " + std::to_string(a.block) + " must be >= 1");
  if (!(a.ttl >= 0)) throw UsageError("--ttl " + std::to_string(a.ttl) + " must be >= 0 seconds");
  if (a.bpt_tokens < 1) throw UsageError("--bpt-tokens " + std::to_string(a.bpt_tokens) + " must be >= 1");
  if (a.model_requests < 0) throw UsageError("--model-requests " + std::to_string(a.model_requests) + " must be >= 0");
  const std::vector<double> capacities = parse_capacities(a.capacity);
  const Backend backend = model::parse_runner_backend(a.backend);
  std::unique_ptr<model::Model> m;
  if (!a.model.empty() && a.shape.empty() && a.trace.empty())
    m = std::make_unique<model::Model>(model::load_model(a.model));
  const HeadShape h = head_shape(a, m.get());
  std::vector<CodecRun> codecs;
  for (const auto& s : a.codecs.empty() ? std::vector<std::string>{"fp16"} : a.codecs)
    codecs.push_back(make_codec_run(s, h, a.bpt_tokens));

  std::unique_ptr<model::Tokenizer> tok;
  auto tokenizer = [&]() -> const model::Tokenizer* {
    if (!tok && (!a.tokenizer.empty() || m)) tok = model::tokenizer_for_model(a.model, a.tokenizer);
    return tok.get();
  };
  const std::vector<PrefixRequest> w =
      a.synth.empty() ? read_workload(a.workload, tokenizer) : synth_prefix_workload(a.synth, h.vocab);
  if (!a.write_workload.empty()) write_workload(a.write_workload, w);
  int64_t tokens = 0;
  std::set<std::string> sessions;
  for (size_t i = 0; i < w.size(); ++i) {
    tokens += static_cast<int64_t>(w[i].ids.size());
    if (!w[i].session.empty()) sessions.insert(w[i].session);
    for (int32_t id : w[i].ids)
      if (id >= h.vocab)
        throw FormatError("request " + std::to_string(i) + ": token id " + std::to_string(id) +
                          " is outside the vocabulary [0, " + std::to_string(h.vocab) + ") of " + h.source);
  }

  nlohmann::json j = {{"workload", a.synth.empty() ? a.workload : "synth:" + a.synth},
                      {"requests", w.size()},
                      {"tokens", tokens},
                      {"sessions", sessions.size()},
                      {"source", h.source},
                      {"shape", {{"L", h.L}, {"Hkv", h.Hkv}, {"D", h.D}}},
                      {"block", a.block},
                      {"ttl", std::isinf(a.ttl) ? nlohmann::json(nullptr) : nlohmann::json(a.ttl)},
                      {"bpt_tokens", a.bpt_tokens},
                      {"results", nlohmann::json::array()}};
  const size_t n_model = m ? std::min<size_t>(w.size(), static_cast<size_t>(a.model_requests)) : 0;
  std::vector<std::vector<int32_t>> model_ids;
  for (size_t i = 0; i < n_model; ++i) model_ids.push_back(w[i].ids);
  for (const CodecRun& c : codecs) {
    std::vector<std::vector<int64_t>> hits;
    for (double cap : capacities) {
      PrefixCacheOptions opt;
      opt.block = a.block, opt.capacity_bytes = cap, opt.bytes_per_token = c.bytes_per_token, opt.ttl = a.ttl;
      const PrefixStats s = simulate_prefix_cache(w, opt);
      j["results"].push_back(
          {{"codec", c.spec},
           {"bytes_per_token", c.bytes_per_token},
           {"capacity_bytes", cap},
           {"capacity_tokens", std::floor(cap / (c.bytes_per_token * double(a.block))) * double(a.block)},
           {"token_hit_rate", s.token_hit_rate()},
           {"request_hit_rate", s.request_hit_rate()},
           {"prefill_tokens_saved", s.hit_tokens},
           {"hit_requests", s.hit_requests},
           {"evictions_ttl", s.evictions_ttl},
           {"evictions_lru", s.evictions_lru},
           {"peak_bytes", s.peak_bytes},
           {"mean_bytes", s.mean_bytes},
           {"final_bytes", s.final_bytes},
           {"bytes_over_time", bytes_over_time(w, s)}});
      hits.emplace_back();
      for (size_t i = 0; i < n_model; ++i) hits.back().push_back(s.served[i].hit);
    }
    if (n_model == 0) continue;
    const auto rs = model::measure_prefix_reuse(*m, model_ids, hits, c.get(), a.continuation, backend);
    for (size_t k = 0; k < rs.size(); ++k)
      j["results"][j["results"].size() - rs.size() + k]["model"] = reuse_json(rs[k]);
  }
  if (a.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  print_table(j, h, a);
  return 0;
}

}  // namespace

void add_prefix(CLI::App& app) {
  auto a = std::make_shared<PrefixArgs>();
  std::string shapes, kinds, codecs = "fp16";
  for (const auto& s : traces::synth_shapes()) shapes += (shapes.empty() ? "" : ", ") + s.name;
  for (const auto& k : prefix_workload_kinds()) kinds += (kinds.empty() ? "" : ", ") + k;
  for (const auto& n : codec_names()) codecs += ", " + n;
  CLI::App* c = app.add_subcommand("prefix", "A KV prefix cache (radix tree, TTL then LRU) over a request workload");
  c->footer(
      "Requests arrive in order; the cache keeps the KV of token prefixes in blocks of --block tokens (a\n"
      "radix tree over blocks: a request reuses its longest cached prefix, at most floor((n-1)/block)\n"
      "blocks, since its last token is always computed). On each arrival, blocks idle longer than --ttl\n"
      "go first; the request's new blocks are then cached, evicting the least recently used leaf blocks\n"
      "of other requests while one does not fit (a request longer than the capacity caches the blocks\n"
      "that fit). A cached token costs the codec's bytes: its byte accounting (the one `kvsim run`\n"
      "reports) for a cache of --bpt-tokens tokens, divided by them, times L * Hkv.\n"
      "token hit rate: reused / requested tokens; request hit rate: requests reusing at least one block.\n"
      "Workload lines (JSONL): {\"ids\": [...]} or {\"text\": \"...\"} (needs a tokenizer), optional\n"
      "\"arrival\" (seconds, non-decreasing; default: the line's index) and \"session\".\n"
      "--synth KIND[:key=value,...] (sim/prefix_workload.h; seed=0, rate=1 requests/s):\n"
      "  system-prompt requests=200 system=1024 user=128 prompts=1 zipf=0: shared system prompts (zipf:\n"
      "                popularity skew, 0 uniform), each with its own user turn\n"
      "  chat sessions=16 turns=8 system=256 user=64 reply=128: multi-turn chats that grow\n"
      "  agent loops=8 steps=16 context=2048 obs=64: agent loops re-sending a long context\n"
      "  random requests=200 len=1024: uniform random prompts (no reuse)\n"
      "--json, per codec and capacity: codec, bytes_per_token, capacity_bytes, capacity_tokens,\n"
      "token_hit_rate, request_hit_rate, prefill_tokens_saved, hit_requests, evictions_ttl,\n"
      "evictions_lru, peak_bytes, mean_bytes (after each request), final_bytes, bytes_over_time\n"
      "([arrival, bytes] after a request, at most about 200 of them) and with --model `model`.\n"
      "With --model the first --model-requests requests also run on the model: the prefix's KV through\n"
      "the codec is reused and only the missed part is prefilled; `model` reports the measured prefill\n"
      "time saved and the greedy agreement and perplexity of a --continue token continuation against\n"
      "the uncached run (traces/model/prefix_reuse.h).");
  c->add_option("--workload", a->workload, "requests, one JSON object per line");
  c->add_option("--synth", a->synth, "generate the workload instead: " + kinds);
  c->add_option("--shape", a->shape, "head shape of a named model: " + shapes);
  c->add_option("--trace", a->trace, "head shape of a trace");
  c->add_option("--model", a->model, "head shape (and tokenizer) of a model; runs the measured reuse");
  c->add_option("--tokenizer", a->tokenizer, "tokenizer for \"text\" lines (default: the model's)");
  c->add_option("--capacity", a->capacity, "cache sizes, comma-separated: 0, 4096, 256MiB, 1GiB, 1.5GB ...")
      ->required();
  c->add_option("--codec", a->codecs, "storage codec of the cached KV (repeatable; default fp16): " + codecs);
  c->add_option("--ttl", a->ttl, "seconds an idle block survives (default: no TTL)");
  c->add_option("--block", a->block, "tokens per cached block")->capture_default_str();
  c->add_option("--bpt-tokens", a->bpt_tokens, "cache length whose codec bytes set the bytes per token")
      ->capture_default_str();
  c->add_option("--model-requests", a->model_requests, "with --model: requests run on the model (0: none)")
      ->capture_default_str();
  c->add_option("--continue", a->continuation, "with --model: continuation tokens compared")->capture_default_str();
  c->add_option("--backend", a->backend, "with --model: cpu, ref or omp")->capture_default_str();
  c->add_option("--write-workload", a->write_workload, "also write the workload as JSONL (with --synth: to reuse it)");
  c->add_flag("--json", a->json, "print JSON ({\"results\": [...]}, one object per codec and capacity)");
  c->callback([a] { exit_status() = run_prefix(*a); });
}

}  // namespace kvsim::tools
