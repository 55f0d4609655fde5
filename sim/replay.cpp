#include "sim/replay.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>

#include "cuda/attend.h"
#include "sim/base/error.h"
#include "sim/instance.h"
#include "sim/kernels/kernels.h"
#include "sim/stats_cache.h"
#include "traces/reader.h"

namespace kvsim {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Job {
  int64_t config = 0;
  InstanceContext ctx;
};

// Collects per-step metric values of one query head, then summarizes them.
struct HeadTrace {
  std::vector<int64_t> steps;
  std::array<std::vector<double>, kNumMetrics> values;
};

void summarize_head(const HeadTrace& ht, const std::vector<int64_t>& edges, HeadResult& out) {
  const int64_t bins = static_cast<int64_t>(edges.size()) - 1;
  for (int m = 0; m < kNumMetrics; ++m) {
    out.summary[m] = summarize(ht.values[m], higher_is_better(m));
    std::vector<double> sum(bins, 0.0), cnt(bins, 0.0);
    int64_t b = 0;
    for (size_t i = 0; i < ht.steps.size(); ++i) {
      while (b + 1 < bins && ht.steps[i] >= edges[b + 1]) ++b;
      sum[b] += ht.values[m][i];
      cnt[b] += 1;
    }
    out.curve[m].assign(bins, NAN);
    for (int64_t i = 0; i < bins; ++i)
      if (cnt[i] > 0) out.curve[m][i] = sum[i] / cnt[i];
  }
}

// The offline replay's measuring hook around one Instance (sim/instance.h, which runs the
// protocol): on every stride-th decode step, after attention and before observe/evict, each query
// head's compressed attention is compared with the exact statistics (design.md §4).
class InstanceMetrics {
 public:
  InstanceMetrics(const LayerView& lv, const ExactStats& rs, const ReplayOptions& opt, int64_t layer)
      : lv_(lv), rs_(rs), opt_(opt), layer_(layer), present_(static_cast<size_t>(lv.T), 0) {}

  void operator()(const Instance& inst, int64_t t) {
    if (opt_.on_step) opt_.on_step(layer_, inst, t);
    if ((t - inst.context().P) % opt_.stride != 0) return;
    if (heads_.empty()) heads_.resize(static_cast<size_t>(inst.n_caches() * inst.rows()));
    for (int64_t c = 0; c < inst.n_caches(); ++c) measure(inst, c, t);
  }

  void finish(const Instance& inst, const std::vector<int64_t>& edges, ConfigResult& result) {
    const int64_t G = inst.rows();
    heads_.resize(static_cast<size_t>(inst.n_caches() * G));
    for (int64_t c = 0; c < inst.n_caches(); ++c)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = inst.q_head(c, g);
        HeadResult& hr = result.heads[layer_ * lv_.H + h];
        hr.layer = layer_, hr.head = h;
        summarize_head(heads_[c * G + g], edges, hr);
      }
  }

 private:
  void measure(const Instance& inst, int64_t c, int64_t t) {
    const int64_t kv = inst.kv_of(c), D = lv_.D, T = lv_.T, G = inst.rows();
    const CacheErrors ce = cache_errors(inst.cache(c), lv_.k_head(kv), lv_.v_head(kv), lv_.k_norm + kv * T, D);
    const double bytes = inst.kv_bytes(c), read = inst.kv_read_bytes(c);
    const SlotCache* marked = nullptr;  // the slots whose members present_ marks now
    MetricRow row{};
    for (int64_t g = 0; g < G; ++g) {
      const SlotCache& cc = inst.attended(c, g);  // the cache, or under protocol sparse what head g read
      if (marked != &cc) {
        if (marked) mark(*marked, 0);
        mark(cc, 1), marked = &cc;
      }
      const int64_t h = inst.q_head(c, g);
      StepInputs in;
      in.t = t, in.D = D, in.K = rs_.K, in.eps = opt_.eps;
      in.q = lv_.q_head(h) + t * D;
      in.o_ref = rs_.o.data() + (h * T + t) * D;
      in.lse_ref = rs_.lse[h * T + t];
      in.top_pos = rs_.top_pos.data() + (h * T + t) * rs_.K;
      in.k_orig = lv_.k_head(kv), in.v_orig = lv_.v_head(kv), in.k_norm = lv_.k_norm + kv * T;
      in.cache = &cc;
      in.logit = inst.logit(c, g);
      in.w = inst.weights(c, g);
      in.o_hat = inst.o_hat(c) + g * D;
      in.present = present_.data();
      measure_step(in, ce, row);
      row[int(Metric::bytes)] = bytes;
      row[int(Metric::ratio)] = cache_ratio(bytes, D, t);
      row[int(Metric::read_bytes)] = read;
      row[int(Metric::read_ratio)] = cache_ratio(read, D, t);
      HeadTrace& ht = heads_[c * G + g];
      ht.steps.push_back(t);
      for (int m = 0; m < kNumMetrics; ++m) ht.values[m].push_back(row[m]);
    }
    if (marked) mark(*marked, 0);
  }

  void mark(const SlotCache& cc, uint8_t v) {
    for (int64_t s = 0; s < cc.size(); ++s)
      for (int64_t j = 0; j < cc.n_members(s); ++j) present_[cc.member(s, j)] = v;
  }

  const LayerView& lv_;
  const ExactStats& rs_;
  const ReplayOptions& opt_;
  const int64_t layer_;
  std::vector<uint8_t> present_;
  std::vector<HeadTrace> heads_;  // [n_caches * rows]
};

void run_instance(const LayerView& lv, const ExactStats& rs, int64_t layer, const Strategy& strat, const Job& job,
                  const ReplayOptions& opt, AttendSlotsFn attend, const std::vector<int64_t>& edges,
                  ConfigResult& result, std::vector<std::string>& degeneracies) {
  Instance inst(strat, job.ctx);
  InstanceMetrics metrics(lv, rs, opt, layer);
  inst.prefill_from(lv);
  for (int64_t t = job.ctx.P; t < lv.T; ++t) inst.step(lv, t, attend, metrics);
  metrics.finish(inst, edges, result);
  degeneracies = inst.degeneracies();
}

// Counts each instance's degeneracies into its configuration (serially, after the threads).
void count_degeneracies(const std::vector<Job>& jobs, const std::vector<std::vector<std::string>>& found,
                        std::vector<ConfigResult>& results) {
  for (size_t i = 0; i < jobs.size(); ++i) {
    ConfigResult& r = results[jobs[i].config];
    r.n_caches += jobs[i].ctx.n_caches;
    for (const auto& d : found[i]) ++r.degenerate[d];
  }
}

// Runs body(i) for i in [0, n) on OpenMP threads, rethrowing the first exception on the caller's.
template <typename F>
void parallel_jobs(int64_t n, F&& body) {
  std::exception_ptr err;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) {
    try {
      body(i);
    } catch (...) {
#pragma omp critical(kvsim_replay_error)
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
}

// The cuda path: all instances of the layer in lockstep; per step one batched attention launch,
// the strategies' host work (append, measure, observe, evict) spread over OpenMP threads.
void replay_layer_lockstep(const LayerView& lv, const ExactStats& rs, int64_t layer,
                           std::span<const Strategy* const> strategies, const ReplayOptions& opt,
                           const std::vector<int64_t>& edges, std::vector<Job>& jobs,
                           std::vector<ConfigResult>& results) {
  const int64_t n_jobs = static_cast<int64_t>(jobs.size());
  std::vector<std::unique_ptr<Instance>> insts(jobs.size());
  std::vector<std::unique_ptr<InstanceMetrics>> metrics(jobs.size());
  std::vector<double> seconds(jobs.size(), 0.0);
  parallel_jobs(n_jobs, [&](int64_t i) {
    const auto t0 = Clock::now();
    insts[i] = std::make_unique<Instance>(*strategies[jobs[i].config], jobs[i].ctx);
    metrics[i] = std::make_unique<InstanceMetrics>(lv, rs, opt, layer);
    insts[i]->prefill_from(lv);
    seconds[i] += since(t0);
  });
  cuda::AttendBatch batch;
  std::vector<int64_t> first(jobs.size());
  double shared = 0;  // packing and the launch, split evenly over the instances
  const int64_t D = lv.D;
  for (int64_t t = jobs.empty() ? lv.T : jobs[0].ctx.P; t < lv.T; ++t) {
    parallel_jobs(n_jobs, [&](int64_t i) {
      const auto t0 = Clock::now();
      insts[i]->store_from(lv, t);
      seconds[i] += since(t0);
    });
    const auto t0 = Clock::now();
    batch.clear(D);
    for (int64_t i = 0; i < n_jobs; ++i)
      for (int64_t c = 0; c < insts[i]->n_caches(); ++c) {
        const int64_t r = batch.add(lv.q_head(insts[i]->q_head(c, 0)) + t * D, lv.T * D, insts[i]->rows(),
                                    insts[i]->cache(c).slots_view());
        if (c == 0) first[i] = r;
      }
    (opt.attend_batch ? opt.attend_batch : &cuda::run_attend_batch)(batch);
    shared += since(t0);
    parallel_jobs(n_jobs, [&](int64_t i) {
      const auto t1 = Clock::now();
      Instance& inst = *insts[i];
      for (int64_t c = 0; c < inst.n_caches(); ++c) {
        const int64_t G = inst.rows(), r = first[i] + c, n = G * inst.cache(c).size();
        inst.prepare_attention(c);
        std::copy(batch.logit_of(r), batch.logit_of(r) + n, inst.logit(c));
        std::copy(batch.w_of(r), batch.w_of(r) + n, inst.weights(c));
        std::copy(batch.o_hat_of(r), batch.o_hat_of(r) + G * D, inst.o_hat(c));
      }
      (*metrics[i])(inst, t);
      inst.finish_step(t);
      seconds[i] += since(t1);
    });
  }
  std::vector<std::vector<std::string>> found(jobs.size());
  for (int64_t i = 0; i < n_jobs; ++i) {
    metrics[i]->finish(*insts[i], edges, results[jobs[i].config]);
    results[jobs[i].config].seconds += seconds[i] + shared / static_cast<double>(n_jobs);
    found[i] = insts[i]->degeneracies();
  }
  count_degeneracies(jobs, found, results);
}

}  // namespace

int64_t parse_prefill(const std::string& s, const std::string& what) {
  if (s == "trace") return kPrefillOfTrace;
  if (s == "context") return kPrefillAtContext;
  size_t used = 0;
  long long v = -1;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != s.size() || s.empty() || v < 0)
    throw UsageError(what + " '" + s +
                     "' must be an integer >= 0, 'trace' (the sequence's prefill_len) or "
                     "'context' (its context_len)");
  return v;
}

int64_t parse_memory(const std::string& s, const std::string& what) {
  size_t used = 0;
  long long v = -1;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit = s.substr(std::min(used, s.size()));
  for (const char* tail : {"iB", "B"})
    if (unit.size() > std::strlen(tail) &&
        unit.compare(unit.size() - std::strlen(tail), std::string::npos, tail) == 0) {
      unit.resize(unit.size() - std::strlen(tail));
      break;
    }
  int shift = -1;
  if (unit.empty())
    shift = 0;
  else if (unit == "K" || unit == "k")
    shift = 10;
  else if (unit == "M" || unit == "m")
    shift = 20;
  else if (unit == "G" || unit == "g")
    shift = 30;
  else if (unit == "T" || unit == "t")
    shift = 40;
  if (used == 0 || shift < 0 || v < 1 || v > (std::numeric_limits<int64_t>::max() >> shift))
    throw UsageError(what + " '" + s + "' must be a positive number of bytes, optionally with K, M, G or T (16G)");
  return static_cast<int64_t>(v) << shift;
}

int64_t replay_layer_bytes(int64_t H, int64_t Hkv, int64_t T, int64_t D, bool pre) {
  // Within the reader's limits (H, Hkv, D <= 4096, T <= 2^24) every product fits in int64.
  const int64_t tensors = 4 * T * D * (H + (pre ? 3 : 2) * Hkv);
  const int64_t stats = H * T * (4 * D + 8 + 4 + 8 * kExactTopK);  // ExactStats: o, lse, entropy, top-k
  return tensors + stats;
}

void check_replay_args(int64_t T, int64_t P, int64_t stride) {
  check_prefill(T, P);
  if (stride <= 0) throw UsageError("stride = " + std::to_string(stride) + " must be >= 1");
}

std::vector<int64_t> bin_edges(int64_t P, int64_t T, int64_t bins) {
  bins = std::max<int64_t>(1, std::min(bins, T - P));
  std::vector<int64_t> e(bins + 1);
  for (int64_t b = 0; b <= bins; ++b) e[b] = P + (T - P) * b / bins;
  return e;
}

void replay_layer(const LayerView& lv, const ExactStats& rs, int64_t layer, int64_t L, int64_t P,
                  std::span<const Strategy* const> strategies, const ReplayOptions& opt,
                  std::vector<ConfigResult>& results, std::span<const std::vector<double>> plans) {
  KVSIM_ASSERT(results.size() == strategies.size());
  KVSIM_ASSERT(plans.empty() || plans.size() == strategies.size());
  const auto edges = bin_edges(P, lv.T, opt.bins);
  const ModelShape shape{L, lv.H, lv.Hkv, lv.D};
  std::vector<Job> jobs;
  for (size_t c = 0; c < strategies.size(); ++c) {
    const Strategy& s = *strategies[c];
    KVSIM_ASSERT(!s.needs_prompt_colsums() || lv.prompt_colsums);
    KVSIM_ASSERT(!s.needs_model_plan() || !plans.empty() || L == 1);
    const std::vector<double>* plan = s.needs_model_plan() && !plans.empty() ? &plans[c] : nullptr;
    for (int64_t i = 0; i < instances_per_layer(s, lv.Hkv); ++i)
      jobs.push_back(Job{static_cast<int64_t>(c), make_context(s, shape, layer, i, lv.T, P, opt.protocol, plan)});
  }
  if (opt.backend == Backend::cuda || opt.attend_batch) {
    if (opt.protocol == Protocol::sparse)
      throw NotCompiled("--protocol sparse runs on the ref and omp backends (the cuda path evaluates whole caches)");
    replay_layer_lockstep(lv, rs, layer, strategies, opt, edges, jobs, results);
    return;
  }
  const AttendSlotsFn attend = kernels(opt.backend).attend_slots;
  std::vector<double> seconds(jobs.size(), 0.0);
  std::vector<std::vector<std::string>> found(jobs.size());
  const int64_t n_jobs = static_cast<int64_t>(jobs.size());
  auto body = [&](int64_t i) {
    const auto t0 = Clock::now();
    const Job& j = jobs[i];
    run_instance(lv, rs, layer, *strategies[j.config], j, opt, attend, edges, results[j.config], found[i]);
    seconds[i] = since(t0);
  };
  if (opt.backend == Backend::omp) {
    parallel_jobs(n_jobs, body);
  } else {
    for (int64_t i = 0; i < n_jobs; ++i) body(i);
  }
  for (int64_t i = 0; i < n_jobs; ++i) results[jobs[i].config].seconds += seconds[i];
  count_degeneracies(jobs, found, results);
}

void finalize_summaries(ConfigResult& r) {
  const double n = static_cast<double>(r.heads.size());
  for (int m = 0; m < kNumMetrics; ++m) {
    MetricSummary s;
    const size_t bins = r.heads.empty() ? 0 : r.heads[0].curve[m].size();
    std::vector<double> cs(bins, 0.0), cn(bins, 0.0);
    for (const auto& h : r.heads) {
      s.mean += h.summary[m].mean;
      s.p5 += h.summary[m].p5;
      s.p50 += h.summary[m].p50;
      s.p95 += h.summary[m].p95;
      s.worst += h.summary[m].worst;
      s.n += h.summary[m].n;
      for (size_t b = 0; b < bins && b < h.curve[m].size(); ++b)
        if (!std::isnan(h.curve[m][b])) cs[b] += h.curve[m][b], cn[b] += 1;
    }
    s.mean /= n, s.p5 /= n, s.p50 /= n, s.p95 /= n, s.worst /= n;
    r.summary[m] = s;
    r.curve[m].assign(bins, NAN);
    for (size_t b = 0; b < bins; ++b)
      if (cn[b] > 0) r.curve[m][b] = cs[b] / cn[b];
  }
}

std::string non_finite_metric(const ConfigResult& r) {
  auto bad = [](const MetricSummary& s, int m, const std::string& where) -> std::string {
    const std::pair<const char*, double> stats[] = {
        {"mean", s.mean}, {"p5", s.p5}, {"p50", s.p50}, {"p95", s.p95}, {"worst", s.worst}};
    for (const auto& [name, x] : stats)
      if (!std::isfinite(x)) return std::string(metric_name(m)) + " " + name + " = " + std::to_string(x) + where;
    return "";
  };
  for (int m = 0; m < kNumMetrics; ++m)
    if (std::string b = bad(r.summary[m], m, ""); !b.empty()) return b;
  for (const HeadResult& h : r.heads)
    for (int m = 0; m < kNumMetrics; ++m)
      if (std::string b =
              bad(h.summary[m], m, " in layer " + std::to_string(h.layer) + ", head " + std::to_string(h.head));
          !b.empty())
        return b;
  return "";
}

ReplayResult replay_source(const LayerSource& src, std::span<const Strategy* const> strategies,
                           const ReplayOptions& opt) {
  require_backend(opt.backend);
  if (strategies.empty()) throw UsageError("no strategy given");
  ReplayResult res;
  res.trace = src.name, res.sequence = src.sequence;
  res.T = src.T, res.stride = opt.stride;
  res.P = opt.prefill == kPrefillOfTrace ? src.prefill_len : opt.prefill;
  if (opt.prefill == kPrefillAtContext) {
    if (src.context_len < 0)
      throw UsageError(src.name + ": sequence " + src.sequence +
                       " has no context_len (record it with kvsim record --context-len or a JSON line's "
                       "context/question)");
    res.P = src.context_len;
  }
  res.L = src.L, res.H = src.H, res.Hkv = src.Hkv, res.D = src.D;
  res.eps = opt.eps, res.backend = opt.backend;
  try {
    check_replay_args(res.T, res.P, res.stride);
  } catch (const UsageError& e) {
    throw UsageError(src.name + ": sequence " + src.sequence + ": " + e.what());
  }
  res.bin_edges = bin_edges(res.P, res.T, opt.bins);
  // Resolve every budget against T before any work (bad budgets fail fast, exit 2).
  res.protocol = opt.protocol;
  for (const Strategy* s : strategies)
    check_fits(*s, ModelShape{res.L, res.H, res.Hkv, res.D}, res.T, res.P, opt.protocol);
  bool need_colsums = false, need_pre = false, need_q_pre = false, need_vo_norm = false, need_kvzip = false;
  for (const Strategy* s : strategies) {
    need_colsums = need_colsums || s->needs_prompt_colsums();
    if (s->needs_pre_rope() && !src.has_k_pre)
      throw UsageError(src.name + ": sequence " + src.sequence + ": " + s->name() +
                       " needs k_pre (record with kvsim record --pre)");
    need_pre = need_pre || s->needs_pre_rope();
    if (s->needs_q_pre() && !src.read_q_pre)
      throw UsageError(src.name + ": sequence " + src.sequence + ": " + s->name() +
                       " needs q_pre (record with kvsim record --pre)");
    need_q_pre = need_q_pre || s->needs_q_pre();
    if (s->needs_vo_norm() && !src.read_vo_norm)
      throw UsageError(src.name + ": sequence " + src.sequence + ": " + s->name() +
                       " needs vo_norm, which the trace lacks (record it with kvsim record --record vo_norm)");
    need_vo_norm = need_vo_norm || s->needs_vo_norm();
    if (s->needs_kvzip_score() && !src.read_kvzip_score)
      throw UsageError(src.name + ": sequence " + src.sequence + ": " + s->name() +
                       " needs kvzip_score, KVzip's context-reconstruction scores, which the trace lacks (record them "
                       "with kvsim record --record kvzip)");
    need_kvzip = need_kvzip || s->needs_kvzip_score();
    ConfigResult c;
    c.strategy = s->name(), c.spec = s->spec_text(), c.params = s->params();
    c.heads.resize(res.L * res.H);
    res.configs.push_back(std::move(c));
  }
  if (const int64_t need = replay_layer_bytes(res.H, res.Hkv, res.T, res.D, need_pre) +
                           (need_q_pre ? 4 * res.H * res.T * res.D : 0) + (need_vo_norm ? 4 * res.H * res.T : 0) +
                           (need_kvzip ? 4 * res.Hkv * res.T : 0);
      need > opt.max_memory)
    throw UsageError(src.name + ": sequence " + src.sequence + ": replaying one layer holds " + std::to_string(need) +
                     " bytes (q, k, v and the reference statistics for H = " + std::to_string(res.H) +
                     ", Hkv = " + std::to_string(res.Hkv) + ", T = " + std::to_string(res.T) +
                     ", D = " + std::to_string(res.D) + "), over --max-memory " + std::to_string(opt.max_memory) +
                     "; raise --max-memory if the machine has it");
  StatsCache cache(src.stats_path, src.stats_seq, opt.backend, res.L, res.H, res.T, res.D,
                   src.stats_path.empty() ? std::string("off") : opt.stats_cache);
  res.stats_from_cache = cache.hit();
  if (!cache.invalid_reason().empty()) res.stats_cache_rebuilt = cache.path() + ": " + cache.invalid_reason();
  // Layer l's tensors as a LayerView (q, k, v, and k_pre, q_pre, vo_norm, kvzip_score where asked), its
  // reading timed.
  const auto read_view = [&](int64_t l, bool pre, bool q_pre, bool vo_norm, bool kvzip) {
    const auto t0 = Clock::now();
    const LayerTensors in = src.read(l, pre);
    LayerView lv;
    lv.H = res.H, lv.Hkv = res.Hkv, lv.T = res.T, lv.D = res.D;
    lv.q = in.q, lv.k = in.k, lv.v = in.v;
    if (pre) lv.k_pre = in.k_pre;
    if (q_pre) lv.q_pre = src.read_q_pre(l);
    if (vo_norm) lv.vo_norm = src.read_vo_norm(l);
    if (kvzip) lv.kvzip_score = src.read_kvzip_score(l), lv.kvzip_context = src.kvzip_context;
    lv.rope_theta = src.rope_theta, lv.rope_style = src.rope_style;
    res.read_seconds += since(t0);
    return lv;
  };
  // The cross-layer plans (Strategy::needs_model_plan): one pass over every layer's prompt first.
  std::vector<std::vector<double>> plans(strategies.size());
  if (std::any_of(strategies.begin(), strategies.end(), [](const Strategy* s) { return s->needs_model_plan(); })) {
    std::vector<std::vector<std::vector<double>>> profiles(strategies.size());
    bool pre = false, q_pre = false, kvzip = false;  // what the planning strategies read besides q, k, v
    for (const Strategy* s : strategies)
      if (s->needs_model_plan())
        pre = pre || s->needs_pre_rope(), q_pre = q_pre || s->needs_q_pre(), kvzip = kvzip || s->needs_kvzip_score();
    for (int64_t l = 0; l < res.L; ++l) {
      const LayerView lv = read_view(l, pre, q_pre, false, kvzip);
      for (size_t c = 0; c < strategies.size(); ++c)
        if (strategies[c]->needs_model_plan()) profiles[c].push_back(strategies[c]->layer_profile(lv, res.P));
    }
    for (size_t c = 0; c < strategies.size(); ++c)
      if (strategies[c]->needs_model_plan()) plans[c] = strategies[c]->make_plan(profiles[c], res.T, res.P);
  }
  ExactStats rs;
  std::vector<float> k_norm, colsums;
  for (int64_t l = 0; l < res.L; ++l) {
    LayerView lv = read_view(l, need_pre, need_q_pre, need_vo_norm, false);  // kvzip_score: the plan pass's only
    k_norm.assign(lv.Hkv * lv.T, 0.0f);
    for (int64_t i = 0; i < lv.Hkv * lv.T; ++i) {
      double s = 0;
      for (int64_t x = 0; x < lv.D; ++x) s += static_cast<double>(lv.k[i * lv.D + x]) * lv.k[i * lv.D + x];
      k_norm[i] = static_cast<float>(std::sqrt(s));
    }
    lv.k_norm = k_norm.data();
    auto t0 = Clock::now();
    if (!cache.load(l, rs)) {
      compute_exact_stats(lv, opt.backend, rs);
      cache.store(l, rs);
    }
    lv.entropy = rs.entropy.data();
    if (need_colsums) {
      compute_prompt_colsums(lv, rs, res.P, opt.backend, colsums);
      lv.prompt_colsums = colsums.data();
    }
    res.ref_seconds += since(t0);
    t0 = Clock::now();
    replay_layer(lv, rs, l, res.L, res.P, strategies, opt, res.configs, plans);
    res.replay_seconds += since(t0);
    if (opt.progress) opt.progress("layer " + std::to_string(l + 1) + "/" + std::to_string(res.L) + " done");
  }
  cache.finish();
  for (auto& c : res.configs) finalize_summaries(c);
  for (ConfigResult& c : res.configs)
    for (const auto& [what, n] : c.degenerate)
      c.warnings.push_back(what + " (in " + std::to_string(n) + " of " + std::to_string(c.n_caches) + " caches)");
  return res;
}

ReplayResult replay_trace(const traces::TraceReader& reader, std::span<const Strategy* const> strategies,
                          const ReplayOptions& opt) {
  require_backend(opt.backend);
  if (reader.sequences().empty()) throw FormatError(reader.path() + ": the trace has no sequences");
  if (opt.seq < 0 || opt.seq >= static_cast<int64_t>(reader.sequences().size()))
    throw UsageError(reader.path() + ": sequence index " + std::to_string(opt.seq) + " out of range [0, " +
                     std::to_string(reader.sequences().size()) + ")");
  const auto& hdr = reader.header();
  const auto& sq = reader.sequence(opt.seq);
  LayerSource src;
  src.name = reader.path(), src.sequence = sq.name;
  src.L = hdr.n_layers, src.H = hdr.n_heads, src.Hkv = hdr.n_kv_heads, src.D = hdr.head_dim, src.T = sq.n_tokens;
  src.prefill_len = sq.prefill_len, src.context_len = sq.context_len;
  src.rope_theta = hdr.rope_theta, src.rope_style = parse_rope_style(hdr.rope_style);
  src.has_k_pre = reader.has(opt.seq, traces::Kind::k_pre);
  src.stats_path = reader.path(), src.stats_seq = opt.seq;
  xt::xtensor<float, 3> q, k, v, k_pre, q_pre;  // the layer in memory
  xt::xtensor<float, 2> vo_norm, kvzip_score;
  src.read = [&](int64_t l, bool want_pre) {
    q = reader.read_layer(opt.seq, l, traces::Kind::q);
    k = reader.read_layer(opt.seq, l, traces::Kind::k);
    v = reader.read_layer(opt.seq, l, traces::Kind::v);
    if (want_pre) k_pre = reader.read_layer(opt.seq, l, traces::Kind::k_pre);
    return LayerTensors{q.data(), k.data(), v.data(), want_pre ? k_pre.data() : nullptr};
  };
  if (reader.has(opt.seq, traces::Kind::q_pre))
    src.read_q_pre = [&](int64_t l) {
      q_pre = reader.read_layer(opt.seq, l, traces::Kind::q_pre);
      return static_cast<const float*>(q_pre.data());
    };
  if (reader.has(opt.seq, traces::Kind::vo_norm))
    src.read_vo_norm = [&](int64_t l) {
      vo_norm = reader.read_vo_norm(opt.seq, l);
      return static_cast<const float*>(vo_norm.data());
    };
  if (reader.has(opt.seq, traces::Kind::kvzip_score)) {
    src.kvzip_context = sq.kvzip_context;
    src.read_kvzip_score = [&](int64_t l) {
      kvzip_score = reader.read_kvzip_score(opt.seq, l);
      return static_cast<const float*>(kvzip_score.data());
    };
  }
  return replay_source(src, strategies, opt);
}

}  // namespace kvsim
