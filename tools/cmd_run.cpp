// kvsim run --trace F --strategy SPEC [--strategy SPEC ...] [--prefill P] [--stride S]
//           [--backend ref|omp|cuda|auto] [--json] [--quiet]: replays one sequence of a trace through
// each strategy and prints a table of metric summaries (design.md §6), or JSON.
#include <cmath>
#include <cstdio>
#include <memory>

#include "sim/base/error.h"
#include "sim/replay.h"
#include "sim/strategies/strategy.h"
#include "tools/commands.h"
#include "tools/progress.h"
#include "tools/report_json.h"
#include "tools/sweep.h"
#include "traces/reader.h"

namespace kvsim::tools {

namespace {

struct RunArgs {
  std::string trace, backend = "auto", sequence, stats_cache, db, protocol = "evict";
  std::vector<std::string> strategies;
  std::string prefill = "trace", max_memory = "8G";
  int64_t stride = 1, bins = 16;
  double eps = 1e-6;
  bool json = false, quiet = false, per_head = false;
};

void print_table(const ReplayResult& r) {
  std::printf(
      "trace %s, sequence %s: T=%lld P=%lld stride=%lld, L=%lld H=%lld Hkv=%lld D=%lld, backend %s, protocol %s\n",
      r.trace.c_str(), r.sequence.c_str(), (long long)r.T, (long long)r.P, (long long)r.stride, (long long)r.L,
      (long long)r.H, (long long)r.Hkv, (long long)r.D, backend_name(r.backend), protocol_name(r.protocol));
  const bool sparse = r.protocol == Protocol::sparse;
  std::printf("means over heads of per-head means (worst: mean over heads of the per-head worst step)\n");
  std::printf("%-36s %8s %8s %9s %9s %8s %9s %7s %7s %7s %6s%s\n", "strategy", "out_cos", "cos_wst", "rel_l2", "mass",
              "mass_wst", "kl", "tv", "top8", "top32", "ratio", sparse ? "   read" : "");
  for (const auto& c : r.configs) {
    auto mean = [&](Metric m) { return c.summary[int(m)].mean; };
    auto worst = [&](Metric m) { return c.summary[int(m)].worst; };
    std::string name = c.spec.size() > 36 ? c.spec.substr(0, 33) + "..." : c.spec;
    std::printf("%-36s %8.5f %8.5f %9.3e %9.6f %8.5f %9.3e %7.4f %7.4f %7.4f %6.3f", name.c_str(),
                mean(Metric::out_cos), worst(Metric::out_cos), mean(Metric::out_rel_l2), mean(Metric::mass),
                worst(Metric::mass), mean(Metric::kl), mean(Metric::tv), mean(Metric::topk8_recall),
                mean(Metric::topk32_recall), mean(Metric::ratio));
    if (sparse) std::printf(" %6.3f", mean(Metric::read_ratio));
    std::printf("\n");
  }
  std::printf("reference %.2fs%s, replay %.2fs, reading %.2fs (kl smoothing eps = %g)\n", r.ref_seconds,
              r.stats_from_cache ? " (from sidecar cache)" : "", r.replay_seconds, r.read_seconds, r.eps);
}

int run_run(const RunArgs& a) {
  const Backend backend = parse_replay_backend(a.backend);
  std::vector<std::unique_ptr<Strategy>> owned;
  std::vector<const Strategy*> strategies;
  for (const auto& s : a.strategies) {
    owned.push_back(make_strategy(s));
    strategies.push_back(owned.back().get());
  }
  traces::TraceReader reader(a.trace);
  ReplayOptions opt;
  opt.prefill = parse_prefill(a.prefill, "--prefill"), opt.stride = a.stride, opt.backend = backend, opt.bins = a.bins,
  opt.eps = a.eps;
  opt.stats_cache = a.stats_cache;
  opt.max_memory = parse_memory(a.max_memory, "--max-memory");
  opt.protocol = parse_protocol(a.protocol);
  if (reader.sequences().empty()) throw FormatError(a.trace + ": the trace has no sequences");
  if (!a.sequence.empty()) opt.seq = reader.find_sequence(a.sequence);
  if (!(a.eps > 0 && a.eps < 1)) throw UsageError("--eps " + std::to_string(a.eps) + " must be in (0, 1)");
  if (a.bins <= 0) throw UsageError("--bins " + std::to_string(a.bins) + " must be >= 1");
  std::unique_ptr<ResultsStore> store;  // opened first: a bad store fails before the replay
  if (!a.db.empty()) store = std::make_unique<ResultsStore>(a.db);
  Progress progress("kvsim run", "layers", reader.header().n_layers, a.quiet);
  opt.progress = [&](const std::string&) { progress.advance(); };
  ReplayResult r = replay_trace(reader, strategies, opt);
  progress.finish();
  warn_degeneracies(r, "kvsim run");
  if (store) {  // the same rows as kvsim sweep writes (sim/store/STORE.md)
    const auto& h = reader.header();
    const int64_t trace_id = store->add_trace(
        store_trace_of(a.trace, h.model, h.synthetic, h.n_layers, h.n_heads, h.n_kv_heads, h.head_dim));
    for (size_t i = 0; i < r.configs.size(); ++i) {
      StoreRun run = store_run_of(r, i);
      run.config_id = store->add_config(store_config_of(a.strategies[i]));
      run.trace_id = trace_id;
      store->commit_run(run);
    }
  }
  if (a.json)
    std::printf("%s\n", json_text(run_json(r, a.per_head)).c_str());
  else
    print_table(r);
  for (const ConfigResult& c : r.configs)  // the store recorded these runs failed (ResultsStore::commit_run)
    if (const std::string bad = non_finite_metric(c); !bad.empty())
      throw Error(a.trace + ": " + c.spec + ": the metric " + bad + " is not finite: the run failed");
  return 0;
}

}  // namespace

void add_run(CLI::App& app) {
  auto a = std::make_shared<RunArgs>();
  const std::string names = strategy_names_help();
  CLI::App* c = app.add_subcommand("run", "Replay a trace through cache strategies and report attention distortion");
  c->add_option("--trace", a->trace, "trace file (.h5)")->required();
  c->add_option("--strategy", a->strategies, "strategy spec name:key=value,... (repeatable); names: " + names)
      ->required();
  c->add_option("--prefill", a->prefill,
                "prefill length P: a number, 'trace' (the sequence's prefill_len) or 'context' (its context_len: a "
                "query-agnostic compression point, the question replayed as decode steps)")
      ->capture_default_str();
  c->add_option("--stride", a->stride, "evaluate every S-th decode step")->capture_default_str();
  c->add_option("--protocol", a->protocol,
                "evict: evict back to the budget after every decode step; prefill: compress the prompt once, "
                "then grow; sparse: a selector picks what each query reads from the full cache "
                "(sim/strategies/STRATEGIES.md, Protocols)")
      ->capture_default_str();
  c->add_option("--backend", a->backend,
                "ref, omp, cuda or auto (auto: omp, or ref without OpenMP; cuda only when asked for)")
      ->capture_default_str();
  c->add_option("--sequence", a->sequence, "sequence name (default: the first)");
  c->add_option("--bins", a->bins, "bins of the per-position curves")->capture_default_str();
  c->add_option("--eps", a->eps, "kl smoothing epsilon")->capture_default_str();
  c->add_option("--stats-cache", a->stats_cache,
                "folder of the reference-statistics sidecar cache (default: $KVSIM_CACHE_DIR, else "
                "~/.cache/kvsim; 'off': none)");
  c->add_option("--db", a->db, "also commit the runs to this results store (sim/store/STORE.md), as kvsim sweep does");
  c->add_option("--max-memory", a->max_memory,
                "most bytes the replay may hold (a layer's q, k, v and reference statistics; K, M, G, T suffixes); "
                "a trace needing more is refused")
      ->capture_default_str();
  c->add_flag("--json", a->json, "print JSON instead of a table");
  c->add_flag("--per-head", a->per_head, "with --json: include per-(layer, head) summaries");
  c->add_flag("--quiet", a->quiet, "no progress on stderr");
  c->callback([a] { exit_status() = run_run(*a); });
}

}  // namespace kvsim::tools
