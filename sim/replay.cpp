#include "sim/replay.h"

#include <chrono>
#include <cmath>
#include <exception>
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
                  std::vector<ConfigResult>& results) {
  KVSIM_ASSERT(results.size() == strategies.size());
  const auto edges = bin_edges(P, lv.T, opt.bins);
  const ModelShape shape{L, lv.H, lv.Hkv, lv.D};
  std::vector<Job> jobs;
  for (size_t c = 0; c < strategies.size(); ++c) {
    const Strategy& s = *strategies[c];
    KVSIM_ASSERT(!s.needs_prompt_colsums() || lv.prompt_colsums);
    for (int64_t i = 0; i < instances_per_layer(s, lv.Hkv); ++i)
      jobs.push_back(Job{static_cast<int64_t>(c), make_context(s, shape, layer, i, lv.T, P, opt.protocol)});
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

ReplayResult replay_trace(const traces::TraceReader& reader, std::span<const Strategy* const> strategies,
                          const ReplayOptions& opt) {
  require_backend(opt.backend);
  if (reader.sequences().empty()) throw FormatError(reader.path() + ": the trace has no sequences");
  if (opt.seq < 0 || opt.seq >= static_cast<int64_t>(reader.sequences().size()))
    throw UsageError(reader.path() + ": sequence index " + std::to_string(opt.seq) + " out of range [0, " +
                     std::to_string(reader.sequences().size()) + ")");
  if (strategies.empty()) throw UsageError("no strategy given");
  const auto& hdr = reader.header();
  const auto& sq = reader.sequence(opt.seq);
  ReplayResult res;
  res.trace = reader.path(), res.sequence = sq.name;
  res.T = sq.n_tokens, res.stride = opt.stride;
  res.P = opt.prefill == kPrefillOfTrace ? sq.prefill_len : opt.prefill;
  if (opt.prefill == kPrefillAtContext) {
    if (sq.context_len < 0)
      throw UsageError(reader.path() + ": sequence " + sq.name +
                       " has no context_len (record it with kvsim record --context-len or a JSON line's "
                       "context/question)");
    res.P = sq.context_len;
  }
  res.L = hdr.n_layers, res.H = hdr.n_heads, res.Hkv = hdr.n_kv_heads, res.D = hdr.head_dim;
  res.eps = opt.eps, res.backend = opt.backend;
  try {
    check_replay_args(res.T, res.P, res.stride);
  } catch (const UsageError& e) {
    throw UsageError(reader.path() + ": sequence " + sq.name + ": " + e.what());
  }
  res.bin_edges = bin_edges(res.P, res.T, opt.bins);
  // Resolve every budget against T before any work (bad budgets fail fast, exit 2).
  res.protocol = opt.protocol;
  for (const Strategy* s : strategies)
    check_fits(*s, ModelShape{res.L, res.H, res.Hkv, res.D}, res.T, res.P, opt.protocol);
  bool need_colsums = false, need_pre = false;
  for (const Strategy* s : strategies) {
    need_colsums = need_colsums || s->needs_prompt_colsums();
    if (s->needs_pre_rope() && !reader.has(opt.seq, traces::Kind::k_pre))
      throw UsageError(reader.path() + ": sequence " + sq.name + ": " + s->name() +
                       " needs k_pre (record with kvsim record --pre)");
    need_pre = need_pre || s->needs_pre_rope();
    ConfigResult c;
    c.strategy = s->name(), c.spec = s->spec_text(), c.params = s->params();
    c.heads.resize(res.L * res.H);
    res.configs.push_back(std::move(c));
  }
  StatsCache cache(reader.path(), opt.seq, opt.backend, res.L, res.H, res.T, res.D, opt.stats_cache);
  res.stats_from_cache = cache.hit();
  ExactStats rs;
  std::vector<float> k_norm, colsums;
  for (int64_t l = 0; l < res.L; ++l) {
    auto t0 = Clock::now();
    auto q = reader.read_layer(opt.seq, l, traces::Kind::q);
    auto k = reader.read_layer(opt.seq, l, traces::Kind::k);
    auto v = reader.read_layer(opt.seq, l, traces::Kind::v);
    xt::xtensor<float, 3> k_pre;
    if (need_pre) k_pre = reader.read_layer(opt.seq, l, traces::Kind::k_pre);
    res.read_seconds += since(t0);
    LayerView lv;
    lv.H = res.H, lv.Hkv = res.Hkv, lv.T = res.T, lv.D = res.D;
    lv.q = q.data(), lv.k = k.data(), lv.v = v.data();
    if (need_pre) lv.k_pre = k_pre.data();
    lv.rope_theta = hdr.rope_theta, lv.rope_style = parse_rope_style(hdr.rope_style);
    k_norm.assign(lv.Hkv * lv.T, 0.0f);
    for (int64_t i = 0; i < lv.Hkv * lv.T; ++i) {
      double s = 0;
      for (int64_t x = 0; x < lv.D; ++x) s += static_cast<double>(lv.k[i * lv.D + x]) * lv.k[i * lv.D + x];
      k_norm[i] = static_cast<float>(std::sqrt(s));
    }
    lv.k_norm = k_norm.data();
    t0 = Clock::now();
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
    replay_layer(lv, rs, l, res.L, res.P, strategies, opt, res.configs);
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

}  // namespace kvsim
