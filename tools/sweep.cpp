#include "tools/sweep.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "sim/base/error.h"
#include "sim/base/spec.h"
#include "sim/instance.h"
#include "sim/metrics.h"
#include "sim/replay.h"
#include "sim/stats_cache.h"
#include "tools/progress.h"
#include "tools/version.h"
#include "traces/reader.h"

namespace kvsim::tools {

namespace {

namespace fs = std::filesystem;

std::atomic<int> g_stop{0};  // the signal that asked to stop, 0: none

extern "C" void on_stop_signal(int sig) { g_stop.store(sig); }

std::vector<std::string> split_plus(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, '+')) out.push_back(part);
  return out;
}

std::string join_params(const std::map<std::string, std::string>& p) {
  std::string out;
  for (const auto& [k, v] : p) out += (out.empty() ? "" : ",") + k + "=" + v;
  return out;
}

// Canonical identity of a spec: the base strategy with every parameter resolved (so that
// `h2o:budget=64` and `h2o:budget=64,gqa=mean` are one configuration), codec parts with their
// keys sorted.
void canonicalize(SweepConfigEntry& e) {
  const StoreConfig c = store_config_of(e.spec);
  e.canonical = c.spec, e.strategy = c.strategy, e.params_json = c.params_json;
}

std::string hostname() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

std::string hash_hex(uint64_t h) {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

void open_trace(SweepWork& w, const std::string& path, std::set<std::string>& seen_hashes) {
  SweepTraceEntry t;
  t.path = path;
  t.row.path = path;
  std::unique_ptr<traces::TraceReader> reader;
  try {
    reader = std::make_unique<traces::TraceReader>(path);
    const auto& h = reader->header();
    t.row = store_trace_of(path, h.model, h.synthetic, h.n_layers, h.n_heads, h.n_kv_heads, h.head_dim);
    if (reader->sequences().empty()) throw FormatError(path + ": the trace has no sequences");
  } catch (const std::exception& e) {
    t.error = e.what();
    std::error_code ec;
    try {
      t.row.content_hash =
          fs::is_regular_file(path, ec) ? hash_hex(file_content_hash(path)) : content_hash_hex("unreadable:" + path);
    } catch (const std::exception&) {
      t.row.content_hash = content_hash_hex("unreadable:" + path);
    }
    if (t.error.find(path) == std::string::npos) t.error = path + ": " + t.error;
  }
  if (!seen_hashes.insert(t.row.content_hash).second) return;  // the same file twice: one set of runs
  const int64_t ti = static_cast<int64_t>(w.traces.size());
  w.traces.push_back(t);
  auto add_groups = [&](const std::string& seq, int64_t seq_index, int64_t T, int64_t own_P, const std::string& err,
                        int64_t context_len = -1) {
    for (int64_t p : w.plan.prefills)
      for (const std::string& protocol : w.plan.protocols) {
        SweepGroup g;
        g.trace = ti, g.seq_index = seq_index, g.sequence = seq, g.n_tokens = T, g.error = err;
        g.prefill = p == -1 ? own_P : p == -2 ? (err.empty() ? context_len : -2) : p;
        g.prefill_code = p;
        g.protocol = parse_protocol(protocol);
        if (g.error.empty() && p == -2 && context_len < 0)
          g.error = path + ": sequence " + seq + " has no context_len (prefill: context needs one)";
        if (g.error.empty() && (g.prefill < 1 || g.prefill >= T))
          g.error = path + ": sequence " + seq + ": prefill P = " + std::to_string(g.prefill) +
                    " must satisfy 1 <= P < T = " + std::to_string(T);
        w.groups.push_back(g);
      }
  };
  if (!t.error.empty()) {
    add_groups("*", -1, 0, -1, t.error);  // sequences unknown: one group per prefill
    return;
  }
  if (w.plan.sequences.empty()) {
    for (size_t s = 0; s < reader->sequences().size(); ++s) {
      const auto& sq = reader->sequences()[s];
      add_groups(sq.name, static_cast<int64_t>(s), sq.n_tokens, sq.prefill_len, "", sq.context_len);
    }
  } else {
    for (const auto& name : w.plan.sequences) {
      try {
        const int64_t s = reader->find_sequence(name);
        const auto& sq = reader->sequence(s);
        add_groups(sq.name, s, sq.n_tokens, sq.prefill_len, "", sq.context_len);
      } catch (const std::exception& e) {
        std::string msg = e.what();
        if (msg.find(path) == std::string::npos) msg = path + ": " + msg;
        add_groups(name, -1, 0, -1, msg);
      }
    }
  }
}

// A run of the sweep: a selector runs under protocol sparse only, every other strategy under evict and
// prefill (kvzip under prefill only: Strategy::runs_under), each at the prefills its entry lists.
bool runs_in(const SweepConfigEntry& c, const SweepGroup& g) {
  return c.strategy_obj->runs_under(g.protocol) &&
         std::find(c.prefills.begin(), c.prefills.end(), g.prefill_code) != c.prefills.end() &&
         std::find(c.protocols.begin(), c.protocols.end(), g.protocol) != c.protocols.end();
}

StoreRun base_run(const SweepWork& w, const SweepGroup& g) {
  StoreRun r;
  r.sequence = g.sequence;
  r.prefill = g.prefill;
  r.protocol = protocol_name(g.protocol);
  r.stride = w.plan.stride;
  r.n_tokens = g.n_tokens;
  r.host = hostname();
  r.kvsim_version = KVSIM_VERSION;
  r.backend = backend_name(w.backend);
  return r;
}

void fill_rows(const ConfigResult& c, const ReplayResult& rr, StoreRun& run) {
  run.summaries.reserve((c.heads.size() + 1) * kNumMetrics);
  auto add = [&](int64_t layer, int64_t head, int m, const MetricSummary& s) {
    StoreSummaryRow row;
    row.layer = layer, row.head = head;
    row.metric = metric_name(m);
    row.mean = s.mean, row.p5 = s.p5, row.p50 = s.p50, row.p95 = s.p95, row.worst = s.worst, row.n = s.n;
    run.summaries.push_back(row);
  };
  for (int m = 0; m < kNumMetrics; ++m) add(-1, -1, m, c.summary[m]);
  for (const auto& h : c.heads)
    for (int m = 0; m < kNumMetrics; ++m) add(h.layer, h.head, m, h.summary[m]);
  for (int m = 0; m < kNumMetrics; ++m)
    for (size_t b = 0; b < c.curve[m].size(); ++b) {
      StoreCurvePoint p;
      p.metric = metric_name(m);
      p.bin = static_cast<int64_t>(b);
      p.pos_lo = rr.bin_edges.at(b), p.pos_hi = rr.bin_edges.at(b + 1);
      p.value = c.curve[m][b];
      run.curves.push_back(p);
    }
}

}  // namespace

StoreConfig store_config_of(const std::string& spec) {
  const auto parts = split_plus(spec);
  auto base = make_strategy(parts.at(0));
  StoreConfig c;
  c.spec = base->name() + (base->params().empty() ? "" : ":" + join_params(base->params()));
  c.strategy = base->name();
  nlohmann::json pj = nlohmann::json::object();
  for (const auto& [k, v] : base->params()) pj[k] = v;
  std::string codecs;
  for (size_t i = 1; i < parts.size(); ++i) {
    const StrategySpec cs = parse_spec(parts[i]);
    c.spec += "+" + cs.name + (cs.params.empty() ? "" : ":" + join_params(cs.params));
    c.strategy += "+" + cs.name;
    codecs += (codecs.empty() ? "" : "+") + cs.name;
    for (const auto& [k, v] : cs.params) pj[cs.name + "." + k] = v;
  }
  if (!codecs.empty()) pj["codec"] = codecs;
  c.params_json = pj.dump();
  return c;
}

StoreTrace store_trace_of(const std::string& path, const std::string& model, bool synthetic, int64_t L, int64_t H,
                          int64_t Hkv, int64_t D) {
  StoreTrace t;
  t.path = path, t.content_hash = hash_hex(file_content_hash(path)), t.model = model, t.synthetic = synthetic;
  t.n_layers = L, t.n_heads = H, t.n_kv_heads = Hkv, t.head_dim = D;
  return t;
}

std::string warnings_text(const ConfigResult& c) {
  std::string out;
  for (const auto& w : c.warnings) out += (out.empty() ? "" : "\n") + w;
  return out;
}

void warn_degeneracies(const ReplayResult& rr, const std::string& who) {
  if (!rr.stats_cache_rebuilt.empty())
    std::fprintf(stderr, "%s: warning: invalid sidecar %s: recomputed the reference statistics and replaced it\n",
                 who.c_str(), rr.stats_cache_rebuilt.c_str());
  for (const auto& c : rr.configs) {
    if (c.warnings.empty()) continue;
    std::string line;
    for (const auto& w : c.warnings) line += (line.empty() ? "" : "; ") + w;
    std::fprintf(stderr, "%s: warning: %s, sequence %s: %s\n", who.c_str(), c.spec.c_str(), rr.sequence.c_str(),
                 line.c_str());
  }
}

StoreRun store_run_of(const ReplayResult& rr, size_t config) {
  StoreRun r;
  r.sequence = rr.sequence, r.prefill = rr.P, r.stride = rr.stride, r.n_tokens = rr.T;
  r.protocol = protocol_name(rr.protocol);
  r.host = hostname(), r.kvsim_version = KVSIM_VERSION, r.backend = backend_name(rr.backend);
  r.seconds = rr.configs.at(config).seconds;
  r.warnings = warnings_text(rr.configs.at(config));
  fill_rows(rr.configs.at(config), rr, r);
  return r;
}

void install_stop_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND;  // a second one kills
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);  // SLURM's time limit: SIGTERM, then SIGKILL after KillWait
}

bool stop_requested() { return g_stop.load() != 0; }

int stop_exit_status() { return 128 + (g_stop.load() ? g_stop.load() : SIGINT); }

std::pair<int64_t, int64_t> parse_shard(const std::string& s) {
  if (s.empty()) return {0, 1};
  const size_t slash = s.find('/');
  try {
    if (slash != std::string::npos) {
      size_t a = 0, b = 0;
      const std::string i_s = s.substr(0, slash), n_s = s.substr(slash + 1);
      const long long i = std::stoll(i_s, &a), n = std::stoll(n_s, &b);
      if (a == i_s.size() && b == n_s.size() && n >= 1 && i >= 0 && i < n) return {i, n};
    }
  } catch (const std::exception&) {
  }
  throw UsageError("--shard '" + s + "' must be I/N with 0 <= I < N (e.g. 0/4; SLURM: $SLURM_ARRAY_TASK_ID/N)");
}

std::string default_db_path(const std::string& config) {
  fs::path p(config);
  return (p.parent_path() / (p.stem().string() + ".db")).string();
}

SweepWork prepare_sweep(const SweepOptions& opt) {
  SweepWork w;
  w.plan = load_sweep_config(opt.config);
  const std::string backend = opt.backend.empty() ? w.plan.backend : opt.backend;
  w.backend = parse_replay_backend(backend);
  if (opt.batch < 1) throw UsageError("--batch " + std::to_string(opt.batch) + " must be >= 1");
  w.max_memory = parse_memory(opt.max_memory, "--max-memory");
  std::map<std::string, size_t> seen;  // canonical spec -> its index in w.configs
  for (const auto& s : w.plan.specs) {
    SweepConfigEntry e;
    e.spec = s.spec, e.line = s.line, e.prefills = s.prefills;
    for (const auto& p : s.protocols) e.protocols.push_back(parse_protocol(p));
    try {
      e.strategy_obj = make_strategy(s.spec);
      canonicalize(e);
    } catch (const UsageError& err) {
      throw UsageError(opt.config + ":" + std::to_string(s.line) + ": " + err.what());
    }
    if (auto it = seen.find(e.canonical); it != seen.end()) {  // one configuration spelled twice: both prefills
      add_new(w.configs[it->second].prefills, e.prefills);
      add_new(w.configs[it->second].protocols, e.protocols);
    } else {
      seen.emplace(e.canonical, w.configs.size());
      w.configs.push_back(std::move(e));
    }
  }
  std::set<std::string> hashes;
  for (const auto& p : w.plan.traces) open_trace(w, p, hashes);
  // Nothing can run when no trace can be read: that is bad input, not a sweep with failed runs.
  bool any_good = false;
  for (const auto& t : w.traces) any_good = any_good || t.error.empty();
  if (!any_good) throw FormatError(w.traces.at(0).error);
  w.total_runs = 0;
  for (const auto& g : w.groups)
    for (const auto& c : w.configs) w.total_runs += runs_in(c, g) ? 1 : 0;
  if (w.total_runs == 0)
    throw UsageError(opt.config +
                     ": no configuration runs under the protocols given (selectors run under sparse "
                     "only, every other strategy under evict or prefill)");
  for (const auto& c : w.configs) {
    bool any = false;
    for (const auto& g : w.groups) any = any || runs_in(c, g);
    if (!any)
      w.warnings.push_back(opt.config + ":" + std::to_string(c.line) + ": '" + c.spec +
                           "' runs under none of its protocols in this sweep (selectors: sparse only; kvzip: prefill "
                           "only); give its entry a protocol: that it runs under");
  }
  return w;
}

std::vector<SweepBatch> pending_batches(const SweepWork& w, ResultsStore& store, int64_t shard, int64_t n_shards,
                                        int64_t batch, int64_t* skipped, std::vector<int64_t>* trace_ids,
                                        std::vector<int64_t>* config_ids) {
  std::vector<StoreConfig> cfgs;
  for (const auto& c : w.configs) cfgs.push_back({c.strategy, c.canonical, c.params_json});
  *config_ids = store.add_configs(cfgs);
  trace_ids->clear();
  for (const auto& t : w.traces) trace_ids->push_back(store.add_trace(t.row));
  const std::set<RunKey> done = store.done_runs();
  std::vector<SweepBatch> out;
  int64_t r = 0;
  *skipped = 0;
  for (size_t g = 0; g < w.groups.size(); ++g) {
    const SweepGroup& grp = w.groups[g];
    SweepBatch b;
    b.group = static_cast<int64_t>(g);
    for (size_t c = 0; c < w.configs.size(); ++c) {
      if (!runs_in(w.configs[c], grp)) continue;  // not a run of this sweep
      if (r++ % n_shards != shard) continue;
      const RunKey key{(*config_ids)[c], (*trace_ids)[grp.trace], grp.sequence,
                       grp.prefill,      w.plan.stride,           protocol_name(grp.protocol)};
      if (done.count(key)) {
        ++*skipped;
        continue;
      }
      b.configs.push_back(static_cast<int64_t>(c));
      if (static_cast<int64_t>(b.configs.size()) == batch) {
        out.push_back(b);
        b.configs.clear();
      }
    }
    if (!b.configs.empty()) out.push_back(b);
  }
  return out;
}

std::vector<SweepOutcome> run_batch(const SweepWork& w, const SweepBatch& b, const std::string& stats_cache) {
  const SweepGroup& g = w.groups.at(b.group);
  const SweepTraceEntry& tr = w.traces.at(g.trace);
  std::vector<SweepOutcome> out;
  for (int64_t c : b.configs) {
    SweepOutcome o;
    o.group = b.group, o.config = c;
    o.run = base_run(w, g);
    out.push_back(std::move(o));
  }
  auto fail = [](SweepOutcome& o, const std::string& msg) {
    o.run.status = "failed";
    o.run.error = msg;
  };
  if (!g.error.empty()) {
    for (auto& o : out) fail(o, g.error);
    return out;
  }
  std::unique_ptr<traces::TraceReader> reader;
  try {
    reader = std::make_unique<traces::TraceReader>(tr.path);
  } catch (const std::exception& e) {
    for (auto& o : out) fail(o, e.what());
    return out;
  }
  // Budgets resolve against T per strategy: a bad one fails its own run, not the batch.
  std::vector<const Strategy*> strategies;
  std::vector<size_t> index;
  const auto& h = reader->header();
  for (size_t i = 0; i < out.size(); ++i) {
    const Strategy* s = w.configs.at(out[i].config).strategy_obj.get();
    try {
      check_fits(*s, ModelShape{h.n_layers, h.n_heads, h.n_kv_heads, h.head_dim}, g.n_tokens, g.prefill, g.protocol);
      strategies.push_back(s);
      index.push_back(i);
    } catch (const std::exception& e) {
      fail(out[i], w.configs.at(out[i].config).spec + ": " + e.what());
    }
  }
  if (strategies.empty()) return out;
  ReplayOptions opt;
  opt.prefill = g.prefill, opt.stride = w.plan.stride, opt.seq = g.seq_index, opt.backend = w.backend;
  opt.protocol = g.protocol;
  opt.stats_cache = stats_cache;
  opt.max_memory = w.max_memory;
  try {
    const ReplayResult rr = replay_trace(*reader, strategies, opt);
    warn_degeneracies(rr, "kvsim sweep");
    for (size_t j = 0; j < index.size(); ++j) {
      SweepOutcome& o = out[index[j]];
      o.run.seconds = rr.configs[j].seconds;
      o.run.warnings = warnings_text(rr.configs[j]);
      if (const std::string bad = non_finite_metric(rr.configs[j]); !bad.empty()) {
        fail(o, w.configs.at(o.config).spec + ": the metric " + bad + " is not finite");
        continue;
      }
      fill_rows(rr.configs[j], rr, o.run);
    }
  } catch (const NotCompiled&) {
    throw;  // the backend cannot run here: no run can, stop the sweep (exit 2)
  } catch (const std::exception& e) {
    for (size_t i : index) fail(out[i], e.what());
  }
  return out;
}

int run_sweep(const SweepOptions& opt) {
  install_stop_handler();
  const auto [shard, n_shards] = parse_shard(opt.shard);
  SweepWork w = prepare_sweep(opt);
  for (const auto& line : w.warnings) std::fprintf(stderr, "kvsim sweep: warning: %s\n", one_line(line).c_str());
  const std::string db = opt.db.empty() ? default_db_path(opt.config) : opt.db;
  ResultsStore store(db);
  int64_t skipped = 0;
  std::vector<int64_t> trace_ids, config_ids;
  const auto batches = pending_batches(w, store, shard, n_shards, opt.batch, &skipped, &trace_ids, &config_ids);
  int64_t pending = 0;
  for (const auto& b : batches) pending += static_cast<int64_t>(b.configs.size());
  Progress progress("kvsim sweep", "runs", pending, opt.quiet);
  int64_t done = 0, failed = 0;
  std::set<std::string> reported;
  bool interrupted = false;
  for (const auto& b : batches) {
    if (stop_requested()) {
      interrupted = true;
      break;
    }
    for (auto& o : run_batch(w, b, opt.stats_cache)) {
      o.run.config_id = config_ids[o.config];
      o.run.trace_id = trace_ids[w.groups[o.group].trace];
      store.commit_run(o.run);
      if (o.run.status == "done") {
        ++done;
      } else {
        ++failed;
        if (reported.insert(o.run.error).second) progress.log("kvsim sweep: run failed: " + o.run.error);
      }
      progress.set_note(failed ? std::to_string(failed) + " failed" : "");
      progress.advance();
    }
  }
  if (stop_requested()) interrupted = true;
  progress.finish();
  std::printf("sweep %s: %lld runs done, %lld failed, %lld already done (shard %lld/%lld of %lld runs); store %s\n",
              w.plan.name.c_str(), (long long)done, (long long)failed, (long long)skipped, (long long)shard,
              (long long)n_shards, (long long)w.total_runs, db.c_str());
  std::fflush(stdout);
  if (interrupted) {
    std::fprintf(stderr, "kvsim sweep: interrupted; %lld runs committed, rerun the same command to resume\n",
                 (long long)done + (long long)failed);
    return stop_exit_status();
  }
  return failed ? 1 : 0;
}

}  // namespace kvsim::tools
