// kvsim capacity (--shape NAME | --config F | --trace F | --model M) --memory SIZE[,SIZE...]
//                [--batch N] [--context C] [--weights-dtype D | --weights SIZE] [--reserve SIZE]
//                [--strategy SPEC ...] [--ratio-trace F] [--ratio-tokens T] [--mem-limit SIZE] [--json]:
// how long a context fits in a device's memory, and how far each strategy pushes that wall
// (tools/capacity.h holds the arithmetic; README "How long a context fits" the worked example).
// The ratio of a strategy is measured, not assumed: kvsim's own byte accounting on a replay
// (measured_ratios). --mem-limit measures the CPU wall with the native runner
// (traces/model/memory_wall.h).
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "sim/base/error.h"
#include "sim/replay.h"
#include "sim/strategies/strategy.h"
#include "tools/capacity.h"
#include "tools/commands.h"
#include "tools/progress.h"
#include "tools/sweep.h"
#include "traces/model/memory_wall.h"
#include "traces/model/runner.h"
#include "traces/reader.h"
#include "traces/synth.h"

namespace kvsim::tools {

namespace {

struct CapacityArgs {
  std::string shape, config, trace, model, weights, weights_dtype = "bf16", reserve = "0", ratio_trace, mem_limit;
  std::string backend = "ref";
  std::vector<std::string> memory, strategies;
  int64_t batch = 1, context = 4096, ratio_tokens = 1024, max_tokens = 0;
  bool json = false, quiet = false;
};

// The model whose memory is asked about: its shape, where it came from, its weights when known.
struct Subject {
  std::string label, source;  // "llama3-8b", "named shape" | "config.json" | "trace" | "llama2.c checkpoint" ...
  model::ModelConfig config;  // hidden_dim 0: the weights' size is unknown
  std::unique_ptr<model::Model> model;  // --model: loaded (the wall runs it)
};

Subject subject_of(const CapacityArgs& a) {
  const int n = int(!a.shape.empty()) + int(!a.config.empty()) + int(!a.trace.empty()) + int(!a.model.empty());
  if (n != 1) throw UsageError("give exactly one of --shape NAME, --config F, --trace F or --model M");
  Subject s;
  if (!a.shape.empty()) {
    s.config = config_of_shape(traces::find_synth_shape(a.shape));
    s.label = a.shape, s.source = "named shape";
  } else if (!a.config.empty()) {
    s.config = model::load_hf_config(a.config);
    s.label = a.config, s.source = "Hugging Face config";
  } else if (!a.trace.empty()) {
    const traces::TraceReader r(a.trace);
    const auto& h = r.header();
    s.config.n_layers = h.n_layers, s.config.n_heads = h.n_heads, s.config.n_kv_heads = h.n_kv_heads;
    s.config.head_dim = h.head_dim, s.config.vocab_size = h.vocab_size, s.config.dim = h.n_heads * h.head_dim;
    s.label = a.trace, s.source = "trace of " + h.model;
  } else {
    s.model = std::make_unique<model::Model>(model::load_model(a.model));
    s.config = s.model->config;
    s.label = a.model, s.source = s.config.hf_architecture == "llama2.c" ? "llama2.c checkpoint" : "Hugging Face model";
  }
  s.config.name = s.label;
  return s;
}

struct Weights {
  double bytes = 0;
  int64_t params = -1;  // -1: --weights gave the bytes
  std::string dtype;
};

Weights weights_of(const CapacityArgs& a, const Subject& s) {
  Weights w;
  if (!a.weights.empty()) {
    w.bytes = static_cast<double>(parse_size(a.weights, "--weights"));
    w.dtype = "given";
    return w;
  }
  const double per = weight_dtype_bytes(a.weights_dtype);
  if (s.config.hidden_dim <= 0)
    throw UsageError(s.label + " (" + s.source +
                     "): the weights' size is unknown (no FFN size): give --weights SIZE "
                     "(0 for the KV cache alone)");
  w.params = parameter_count(s.config);
  w.bytes = static_cast<double>(w.params) * per;
  w.dtype = a.weights_dtype;
  return w;
}

// Deletes a temporary trace when it goes out of scope.
struct TempFile {
  std::string path;
  ~TempFile() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove(path, ec);
  }
};

// A one-layer synthetic trace with the subject's head shape (H, Hkv, D), T tokens, prefill T/2.
std::string synth_ratio_trace(const model::ModelConfig& c, int64_t T, TempFile& tmp) {
  if (T < 2) throw UsageError("--ratio-tokens " + std::to_string(T) + " must be >= 2");
  traces::SynthShape shape{c.name,       1,
                           c.n_heads,    c.n_kv_heads,
                           c.head_dim,   std::max<int64_t>(c.vocab_size, 2),
                           c.rope_theta, c.rope_style == RopeStyle::interleaved ? "interleaved" : "half"};
  traces::SynthOptions o;
  o.tokens = T;
  o.layers = 1;
  o.outlier_channels = std::min<int64_t>(o.outlier_channels, c.head_dim);
  const auto dir = std::filesystem::temp_directory_path();
  tmp.path = (dir / ("kvsim-capacity-" + std::to_string(::getpid()) + ".h5")).string();
  traces::WriterOptions w;
  w.overwrite = true;
  traces::write_synthetic_trace(tmp.path, shape, o, w);
  return tmp.path;
}

struct Measured {
  std::string trace, what;  // the trace replayed; "the trace", "a synthetic one-layer trace of ..."
  int64_t T = 0, P = 0, Hkv = 0, D = 0;
  std::vector<double> ratios;  // per strategy
  std::vector<std::vector<std::string>> warnings;
};

// Each strategy's ratio: the bytes it held at its peak over the replay (the last step for a cache
// that only grows: budget plus the new token, or a codec's payload, scales and fp16 window),
// summed over (layer, KV head), over an fp16 full cache of the same T tokens.
Measured measured_ratios(const CapacityArgs& a, const Subject& s, std::span<const Strategy* const> strategies) {
  Measured m;
  TempFile tmp;
  if (!a.ratio_trace.empty() || !a.trace.empty()) {
    m.trace = a.ratio_trace.empty() ? a.trace : a.ratio_trace;
    m.what = "trace " + m.trace;
  } else {
    m.trace = synth_ratio_trace(s.config, a.ratio_tokens, tmp);
    m.what = "a synthetic one-layer trace of the shape (H=" + std::to_string(s.config.n_heads) +
             ", Hkv=" + std::to_string(s.config.n_kv_heads) + ", D=" + std::to_string(s.config.head_dim) + ")";
  }
  const traces::TraceReader reader(m.trace);
  if (reader.sequences().empty()) throw FormatError(m.trace + ": the trace has no sequences");
  ReplayOptions opt;
  opt.backend = parse_replay_backend("auto");
  opt.stats_cache = tmp.path.empty() ? "" : "off";
  const ReplayResult r = replay_trace(reader, strategies, opt);
  warn_degeneracies(r, "kvsim capacity");
  m.T = r.T, m.P = r.P, m.Hkv = r.Hkv, m.D = r.D;
  const double fp16_full = 4.0 * static_cast<double>(r.D) * static_cast<double>(r.T);  // per (layer, KV head)
  for (const auto& c : r.configs) {
    m.ratios.push_back(c.summary[int(Metric::bytes)].worst / fp16_full);
    m.warnings.push_back(c.warnings);
  }
  return m;
}

struct Row {
  std::string spec;
  double ratio = 1, per_token = 0;  // bytes per token of one sequence's KV
  std::vector<std::string> notes;
};

std::vector<Row> rows_of(const CapacityArgs& a, const Subject& s, Measured& measured) {
  const double fp16 =
      static_cast<double>(kv_bytes_per_token(s.config.n_layers, s.config.n_kv_heads, s.config.head_dim));
  std::vector<Row> rows{{"full (fp16)", 1.0, fp16, {}}};
  std::vector<std::unique_ptr<Strategy>> owned;
  std::vector<const Strategy*> strategies;
  for (const auto& spec : a.strategies) {
    owned.push_back(make_strategy(spec));
    strategies.push_back(owned.back().get());
  }
  if (strategies.empty()) return rows;
  measured = measured_ratios(a, s, strategies);
  for (size_t i = 0; i < strategies.size(); ++i) {
    Row r{a.strategies[i], measured.ratios[i], fp16 * measured.ratios[i], measured.warnings[i]};
    if (a.strategies[i].find("budget=") != std::string::npos)
      r.notes.push_back(
          "a budget in tokens holds a fixed number of slots: its ratio falls with the length, so "
          "its real wall is further than this (give the budget as ratio= to compare)");
    rows.push_back(std::move(r));
  }
  return rows;
}

struct Cell {
  double memory = 0, available = 0;
  int64_t max_context = 0, max_batch = 0;
};

Cell cell_of(const CapacityArgs& a, double memory, double weights, double reserve, const Row& r) {
  Cell c;
  c.memory = memory;
  c.available = memory - weights - reserve;
  c.max_context = max_context(c.available, r.per_token, a.batch);
  c.max_batch = max_batch(c.available, r.per_token, a.context);
  return c;
}

nlohmann::json wall_json(const model::WallResult& w) {
  return {{"backend", "cpu"},
          {"limit_bytes", w.limit_bytes},
          {"baseline_bytes", w.baseline_bytes},
          {"bytes_per_token", w.bytes_per_token},
          {"predicted_tokens", w.predicted_tokens},
          {"page_tokens", w.page_tokens},
          {"measured_tokens", w.measured_tokens},
          {"relative_error",
           static_cast<double>(w.measured_tokens - w.predicted_tokens) / static_cast<double>(w.predicted_tokens)},
          {"hit_limit", w.hit_limit},
          {"failure", w.failure},
          {"seconds", w.seconds}};
}

struct Report {
  const CapacityArgs& a;
  const Subject& s;
  Weights weights;
  double reserve = 0;
  std::vector<double> memories;
  std::vector<Row> rows;
  Measured measured;
  std::unique_ptr<model::WallResult> wall;
};

nlohmann::json to_json(const Report& rp) {
  const auto& c = rp.s.config;
  nlohmann::json j;
  j["model"] = rp.s.label;
  j["source"] = rp.s.source;
  j["shape"] = {{"L", c.n_layers}, {"H", c.n_heads}, {"Hkv", c.n_kv_heads}, {"D", c.head_dim}};
  j["parameters"] = rp.weights.params < 0 ? nlohmann::json(nullptr) : nlohmann::json(rp.weights.params);
  j["weights_dtype"] = rp.weights.dtype;
  j["weights_bytes"] = rp.weights.bytes;
  j["reserve_bytes"] = rp.reserve;
  j["batch"] = rp.a.batch;
  j["context"] = rp.a.context;
  j["kv_bytes_per_token_fp16"] = rp.rows.front().per_token;
  if (!rp.measured.trace.empty())
    j["ratio_source"] = {{"what", rp.measured.what}, {"T", rp.measured.T}, {"P", rp.measured.P}};
  j["results"] = nlohmann::json::array();
  for (const auto& r : rp.rows)
    for (double mem : rp.memories) {
      const Cell cl = cell_of(rp.a, mem, rp.weights.bytes, rp.reserve, r);
      j["results"].push_back({{"strategy", r.spec},
                              {"ratio", r.ratio},
                              {"kv_bytes_per_token", r.per_token},
                              {"memory_bytes", cl.memory},
                              {"available_bytes", cl.available},
                              {"max_context", cl.max_context},
                              {"max_batch", cl.max_batch},
                              {"notes", r.notes}});
    }
  if (rp.wall) j["wall"] = wall_json(*rp.wall);
  return j;
}

void print_wall(const model::WallResult& w) {
  const auto pct = [&](int64_t x) {
    return 100.0 * static_cast<double>(w.measured_tokens - x) / static_cast<double>(x);
  };
  std::printf(
      "measured CPU wall (native runner, RLIMIT_DATA = %s above its %s at the start, %s per token: float32 "
      "K and V + an int64 position per (layer, KV head)):\n",
      size_str(static_cast<double>(w.limit_bytes)).c_str(), size_str(static_cast<double>(w.baseline_bytes)).c_str(),
      size_str(static_cast<double>(w.bytes_per_token)).c_str());
  std::printf(
      "  predicted 1 + limit / bytes per token = %lld tokens; with whole pages per mapping %lld; measured "
      "%lld (%+.2f%%, %+.2f%%), %s after %.2f s\n",
      (long long)w.predicted_tokens, (long long)w.page_tokens, (long long)w.measured_tokens, pct(w.predicted_tokens),
      pct(w.page_tokens), w.hit_limit ? ("allocation failed: " + w.failure).c_str() : "stopped at --max-tokens",
      w.seconds);
}

void print_table(const Report& rp) {
  const auto& c = rp.s.config;
  std::printf("%s (%s): L=%lld H=%lld Hkv=%lld D=%lld", rp.s.label.c_str(), rp.s.source.c_str(), (long long)c.n_layers,
              (long long)c.n_heads, (long long)c.n_kv_heads, (long long)c.head_dim);
  if (rp.weights.params >= 0)
    std::printf(", %.4g parameters, weights %s %s", static_cast<double>(rp.weights.params), rp.weights.dtype.c_str(),
                size_str(rp.weights.bytes).c_str());
  else
    std::printf(", weights %s (given)", size_str(rp.weights.bytes).c_str());
  if (rp.reserve > 0) std::printf(", reserve %s", size_str(rp.reserve).c_str());
  std::printf("\nKV bytes per token (fp16) = 2 x L x Hkv x D x 2 = 2 x %lld x %lld x %lld x 2 = %.0f (%s)\n",
              (long long)c.n_layers, (long long)c.n_kv_heads, (long long)c.head_dim, rp.rows.front().per_token,
              size_str(rp.rows.front().per_token).c_str());
  std::printf(
      "longest context = floor((memory - weights - reserve) / (batch %lld x KV bytes per token x ratio)); "
      "largest batch at context %lld = floor((memory - weights - reserve) / (%lld x KV bytes per token x "
      "ratio))\n",
      (long long)rp.a.batch, (long long)rp.a.context, (long long)rp.a.context);
  if (!rp.measured.trace.empty())
    std::printf("ratio: each strategy's peak bytes over an fp16 full cache, measured on %s (T=%lld, P=%lld)\n",
                rp.measured.what.c_str(), (long long)rp.measured.T, (long long)rp.measured.P);
  std::printf("%-32s %7s %12s %10s %12s %14s %11s\n", "strategy", "ratio", "KV B/token", "memory", "for KV",
              "longest ctx", "batch@ctx");
  for (const auto& r : rp.rows)
    for (double mem : rp.memories) {
      const Cell cl = cell_of(rp.a, mem, rp.weights.bytes, rp.reserve, r);
      const std::string name = r.spec.size() > 32 ? r.spec.substr(0, 29) + "..." : r.spec;
      std::printf("%-32s %7.4f %12.1f %10s %12s %14lld %11lld\n", name.c_str(), r.ratio, r.per_token,
                  size_str(cl.memory).c_str(), size_str(std::max(cl.available, 0.0)).c_str(), (long long)cl.max_context,
                  (long long)cl.max_batch);
    }
  for (const auto& r : rp.rows)
    for (const auto& n : r.notes) std::printf("note: %s: %s\n", r.spec.c_str(), n.c_str());
  if (rp.wall) print_wall(*rp.wall);
}

std::unique_ptr<model::WallResult> measure_wall(const CapacityArgs& a, Subject& s) {
  if (a.mem_limit.empty()) return nullptr;
  if (!s.model) throw UsageError("--mem-limit measures the wall with the native runner: it needs --model M");
  model::WallOptions o;
  o.limit_bytes = parse_size(a.mem_limit, "--mem-limit");
  o.max_tokens = a.max_tokens;
  o.backend = model::parse_runner_backend(a.backend);
  Progress progress("kvsim capacity", "tokens", 1 + o.limit_bytes / model::wall_bytes_per_token(s.config), a.quiet);
  int64_t shown = 0;
  o.progress = [&](int64_t n) { progress.advance(n - shown), shown = n; };
  auto w = std::make_unique<model::WallResult>(model::measure_memory_wall(*s.model, o));
  progress.finish();
  return w;
}

int run_capacity(const CapacityArgs& a) {
  if (a.batch < 1) throw UsageError("--batch " + std::to_string(a.batch) + " must be >= 1");
  if (a.context < 1) throw UsageError("--context " + std::to_string(a.context) + " must be >= 1");
  if (a.memory.empty()) throw UsageError("--memory: give at least one size, e.g. --memory 24GiB,80GiB");
  std::vector<double> memories;
  for (const auto& m : a.memory) {
    const int64_t b = parse_size(m, "--memory");
    if (b == 0) throw UsageError("--memory '" + m + "': must be larger than 0");
    memories.push_back(static_cast<double>(b));
  }
  const double reserve = static_cast<double>(parse_size(a.reserve, "--reserve"));
  for (const auto& spec : a.strategies) make_strategy(spec);  // a bad spec fails before any loading
  if (!a.mem_limit.empty()) parse_size(a.mem_limit, "--mem-limit");
  Subject s = subject_of(a);
  Report rp{a, s, weights_of(a, s), reserve, memories, {}, {}, nullptr};
  rp.rows = rows_of(a, s, rp.measured);
  rp.wall = measure_wall(a, s);
  if (a.json)
    std::printf("%s\n", to_json(rp).dump(2).c_str());
  else
    print_table(rp);
  return 0;
}

}  // namespace

void add_capacity(CLI::App& app) {
  auto a = std::make_shared<CapacityArgs>();
  std::string shapes;
  for (const auto& s : traces::synth_shapes()) shapes += (shapes.empty() ? "" : ", ") + s.name;
  CLI::App* c = app.add_subcommand("capacity", "How long a context fits in memory, under each strategy: the OOM wall");
  c->footer(
      "KV bytes per token (fp16) = 2 (K and V) x L x Hkv x D x 2 bytes; a strategy's = that x its ratio.\n"
      "longest context = floor((memory - weights - reserve) / (batch x KV bytes per token x ratio));\n"
      "largest batch at --context C = floor((memory - weights - reserve) / (C x KV bytes per token x ratio)).\n"
      "weights = parameters x bytes per weight of --weights-dtype (parameters from the shape: embedding,\n"
      "lm_head unless tied, attention and SwiGLU matrices, norms), or --weights SIZE.\n"
      "ratio (measured): each strategy replays a trace (--ratio-trace, else --trace, else a synthetic one-layer\n"
      "trace of the model's H, Hkv, D with --ratio-tokens tokens) and its peak bytes over the replay by kvsim's\n"
      "own accounting (payload at its bit width, scales, fp16 windows, positions; sim/strategies/STRATEGIES.md),\n"
      "summed over (layer, KV head), are divided by an fp16 full cache of the same tokens. The ratio is taken\n"
      "to hold at every length: true for ratio budgets and per-token codecs; a codec's fp16 window weighs less\n"
      "at longer contexts, a budget in tokens much less (both walls are then further than printed).\n"
      "--mem-limit SIZE (with --model): the native runner grows a greedy context one token at a time under\n"
      "RLIMIT_DATA = its data memory at the start + SIZE, and reports the tokens held when an allocation\n"
      "failed against 1 + SIZE / (its bytes per token: float32 K and V + an int64 position per (layer, KV head)),\n"
      "and against the same with every mapping grown by whole pages (traces/model/memory_wall.h).\n"
      "Sizes: bytes, or KiB MiB GiB TiB (K M G T alike), or KB MB GB TB.");
  c->add_option("--shape", a->shape, "a named shape: " + shapes);
  c->add_option("--config", a->config, "a Hugging Face config.json (or the directory holding one)");
  c->add_option("--trace", a->trace,
                "a trace: its shape (the weights then need --weights) and its data for the ratios");
  c->add_option("--model", a->model,
                "llama2.c checkpoint (.bin) or Hugging Face directory (loaded; --mem-limit runs it)");
  c->add_option("--memory", a->memory, "device memory sizes, e.g. 24GiB,40GiB,80GiB")->delimiter(',')->required();
  c->add_option("--batch", a->batch, "sequences sharing the memory (for the longest context)")->capture_default_str();
  c->add_option("--context", a->context, "tokens per sequence (for the largest batch)")->capture_default_str();
  c->add_option("--weights-dtype", a->weights_dtype, "fp32, fp16, bf16, int8 or nf4 (4.5 bits)")->capture_default_str();
  c->add_option("--weights", a->weights, "the weights' size instead (0: the KV cache alone)");
  c->add_option("--reserve", a->reserve, "memory kept for activations and the runtime")->capture_default_str();
  c->add_option("--strategy", a->strategies, "strategy spec (repeatable); `full (fp16)` is always the first row");
  c->add_option("--ratio-trace", a->ratio_trace, "the trace the ratios are measured on");
  c->add_option("--ratio-tokens", a->ratio_tokens, "tokens of the synthetic ratio trace")->capture_default_str();
  c->add_option("--mem-limit", a->mem_limit, "measure the CPU wall under this much data memory (needs --model)");
  c->add_option("--max-tokens", a->max_tokens, "with --mem-limit: stop growing here (0: only at the limit)")
      ->capture_default_str();
  c->add_option("--backend", a->backend,
                "with --mem-limit: ref or omp (ref: one thread, so no thread runtime allocates under the limit)")
      ->capture_default_str();
  c->add_flag("--json", a->json, "print JSON instead of a table");
  c->add_flag("--quiet", a->quiet, "no progress on stderr");
  c->callback([a] { exit_status() = run_capacity(*a); });
}

}  // namespace kvsim::tools
