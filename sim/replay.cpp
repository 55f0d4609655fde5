#include "sim/replay.h"

#include <chrono>
#include <cmath>
#include <exception>
#include <memory>

#include "cuda/attend.h"
#include "sim/error.h"
#include "sim/omp/attend.h"
#include "sim/ref/attend.h"
#include "sim/stats_cache.h"
#include "traces/reader.h"

namespace kvsim {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

using AttendFn = void (*)(const float*, int64_t, int64_t, int64_t, const float*, const float*, const float*, int64_t,
                          double*, float*, float*, const int32_t*, int64_t);

struct Job {
  int64_t config = 0, kv0 = 0, n_caches = 1;
  std::unique_ptr<StrategyState> state;
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

// One instance's replay (design.md §3), step by step: prefill in the constructor, then per decode
// step append -> attention (attend(), or the cuda batch: add_requests + take_results) -> end_step
// (measure, observe, evict), and finish() for the summaries. ref and omp run the steps of one
// instance back to back; the cuda path advances every instance of a layer in lockstep so that one
// launch evaluates all their caches at a step.
class InstanceRun {
 public:
  InstanceRun(const LayerView& lv, const RefStats& rs, int64_t P, const Strategy& strat, Job& job,
              const ReplayOptions& opt)
      : lv_(lv), rs_(rs), job_(job), opt_(opt), P_(P), G_(lv.G()), D_(lv.D), T_(lv.T),
        nc_(job.n_caches) {
    caches_.reserve(nc_);
    for (int64_t c = 0; c < nc_; ++c) {
      caches_.emplace_back(D_, P + 1);
      codec_.push_back(strat.codec().make_state(D_, T_));
      const int64_t kv = job.kv0 + c;
      for (int64_t t = 0; t < P; ++t)
        codec_[c]->store(caches_[c], static_cast<int32_t>(t), lv.k_head(kv) + t * D_, lv.v_head(kv) + t * D_);
    }
    job.state->prefill(caches_, lv, P);
    logit_.resize(nc_), w_.resize(nc_), o_hat_.assign(nc_, std::vector<float>(G_ * D_));
    wptr_.resize(nc_), present_.assign(T_, 0), heads_.resize(nc_ * G_);
  }

  // Token t enters every cache (through the codec).
  void append(int64_t t) {
    for (int64_t c = 0; c < nc_; ++c) {
      const int64_t kv = job_.kv0 + c;
      codec_[c]->store(caches_[c], static_cast<int32_t>(t), lv_.k_head(kv) + t * D_, lv_.v_head(kv) + t * D_);
      const int64_t n = caches_[c].size();
      logit_[c].resize(G_ * n), w_[c].resize(G_ * n);
      wptr_[c] = w_[c].data();
    }
  }

  void attend(AttendFn fn, int64_t t) {
    for (int64_t c = 0; c < nc_; ++c) {
      const SlotCache& cc = caches_[c];
      fn(query(c, t), T_ * D_, G_, D_, cc.keys(), cc.values(), cc.biases(), cc.size(), logit_[c].data(),
         w_[c].data(), o_hat_[c].data(), cc.views(), cc.n_views());
    }
  }

  // The cuda path: this instance's requests go into `b` (indices from *first on), results come back.
  int64_t add_requests(cuda::AttendBatch& b, int64_t t) const {
    int64_t first = -1;
    for (int64_t c = 0; c < nc_; ++c) {
      const SlotCache& cc = caches_[c];
      const int64_t r = b.add(query(c, t), T_ * D_, G_, cc.keys(), cc.values(), cc.biases(), cc.size(), cc.views(),
                              cc.n_views());
      if (c == 0) first = r;
    }
    return first;
  }
  void take_results(const cuda::AttendBatch& b, int64_t first) {
    for (int64_t c = 0; c < nc_; ++c) {
      const int64_t r = first + c, n = G_ * caches_[c].size();
      std::copy(b.logit_of(r), b.logit_of(r) + n, logit_[c].begin());
      std::copy(b.w_of(r), b.w_of(r) + n, w_[c].begin());
      std::copy(b.o_hat_of(r), b.o_hat_of(r) + G_ * D_, o_hat_[c].begin());
    }
  }

  // Metrics (every stride-th step), then the strategy observes the weights and evicts.
  void end_step(int64_t t) {
    if ((t - P_) % opt_.stride == 0)
      for (int64_t c = 0; c < nc_; ++c) measure(c, t);
    job_.state->observe(std::span<const SlotCache>(caches_.data(), caches_.size()), wptr_, t);
    job_.state->evict(caches_, t);
  }

  void finish(int64_t layer, const std::vector<int64_t>& edges, ConfigResult& result) const {
    for (int64_t c = 0; c < nc_; ++c)
      for (int64_t g = 0; g < G_; ++g) {
        const int64_t h = (job_.kv0 + c) * G_ + g;
        HeadResult& hr = result.heads[layer * lv_.H + h];
        hr.layer = layer, hr.head = h;
        summarize_head(heads_[c * G_ + g], edges, hr);
      }
  }

 private:
  const float* query(int64_t c, int64_t t) const { return lv_.q_head((job_.kv0 + c) * G_) + t * D_; }

  void measure(int64_t c, int64_t t) {
    const int64_t kv = job_.kv0 + c, D = D_, T = T_;
    const SlotCache& cc = caches_[c];
    const int64_t n = cc.size();
    for (int64_t s = 0; s < n; ++s)
      for (int64_t j = 0; j < cc.n_members(s); ++j) present_[cc.member(s, j)] = 1;
    const CacheErrors ce = cache_errors(cc, lv_.k_head(kv), lv_.v_head(kv), lv_.k_norm + kv * T, D);
    const double bytes = codec_[c]->bytes(cc) + job_.state->state_bytes(c);
    MetricRow row{};
    for (int64_t g = 0; g < G_; ++g) {
      const int64_t h = kv * G_ + g;
      StepInputs in;
      in.t = t, in.D = D, in.K = rs_.K, in.eps = opt_.eps;
      in.q = lv_.q_head(h) + t * D;
      in.o_ref = rs_.o.data() + (h * T + t) * D;
      in.lse_ref = rs_.lse[h * T + t];
      in.top_pos = rs_.top_pos.data() + (h * T + t) * rs_.K;
      in.k_orig = lv_.k_head(kv), in.v_orig = lv_.v_head(kv), in.k_norm = lv_.k_norm + kv * T;
      in.cache = &cc;
      in.logit = logit_[c].data() + g * n;
      in.w = w_[c].data() + g * n;
      in.o_hat = o_hat_[c].data() + g * D;
      in.present = present_.data();
      measure_step(in, ce, row);
      row[int(Metric::bytes)] = bytes;
      row[int(Metric::ratio)] = bytes / (4.0 * static_cast<double>(D) * static_cast<double>(t + 1));
      HeadTrace& ht = heads_[c * G_ + g];
      ht.steps.push_back(t);
      for (int m = 0; m < kNumMetrics; ++m) ht.values[m].push_back(row[m]);
    }
    for (int64_t s = 0; s < n; ++s)
      for (int64_t j = 0; j < cc.n_members(s); ++j) present_[cc.member(s, j)] = 0;
  }

  const LayerView& lv_;
  const RefStats& rs_;
  Job& job_;
  const ReplayOptions& opt_;
  const int64_t P_, G_, D_, T_, nc_;
  std::vector<SlotCache> caches_;
  std::vector<std::unique_ptr<CodecState>> codec_;  // per cache (validated before the parallel region)
  std::vector<std::vector<double>> logit_;
  std::vector<std::vector<float>> w_, o_hat_;
  std::vector<const float*> wptr_;
  std::vector<uint8_t> present_;
  std::vector<HeadTrace> heads_;
};

void run_instance(const LayerView& lv, const RefStats& rs, int64_t layer, int64_t P, const Strategy& strat, Job& job,
                  const ReplayOptions& opt, AttendFn attend, const std::vector<int64_t>& edges,
                  ConfigResult& result) {
  InstanceRun run(lv, rs, P, strat, job, opt);
  for (int64_t t = P; t < lv.T; ++t) {
    run.append(t);
    run.attend(attend, t);
    run.end_step(t);
  }
  run.finish(layer, edges, result);
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
void replay_layer_lockstep(const LayerView& lv, const RefStats& rs, int64_t layer, int64_t P,
                           std::span<const Strategy* const> strategies, const ReplayOptions& opt,
                           const std::vector<int64_t>& edges, std::vector<Job>& jobs,
                           std::vector<ConfigResult>& results) {
  const int64_t n_jobs = static_cast<int64_t>(jobs.size());
  std::vector<std::unique_ptr<InstanceRun>> runs(jobs.size());
  std::vector<double> seconds(jobs.size(), 0.0);
  parallel_jobs(n_jobs, [&](int64_t i) {
    const auto t0 = Clock::now();
    runs[i] = std::make_unique<InstanceRun>(lv, rs, P, *strategies[jobs[i].config], jobs[i], opt);
    seconds[i] += since(t0);
  });
  cuda::AttendBatch batch;
  std::vector<int64_t> first(jobs.size());
  double shared = 0;  // packing and the launch, split evenly over the instances
  for (int64_t t = P; t < lv.T; ++t) {
    parallel_jobs(n_jobs, [&](int64_t i) {
      const auto t0 = Clock::now();
      runs[i]->append(t);
      seconds[i] += since(t0);
    });
    const auto t0 = Clock::now();
    batch.clear(lv.D);
    for (int64_t i = 0; i < n_jobs; ++i) first[i] = runs[i]->add_requests(batch, t);
    (opt.attend_batch ? opt.attend_batch : &cuda::run_attend_batch)(batch);
    shared += since(t0);
    parallel_jobs(n_jobs, [&](int64_t i) {
      const auto t1 = Clock::now();
      runs[i]->take_results(batch, first[i]);
      runs[i]->end_step(t);
      seconds[i] += since(t1);
    });
  }
  for (int64_t i = 0; i < n_jobs; ++i) {
    runs[i]->finish(layer, edges, results[jobs[i].config]);
    results[jobs[i].config].seconds += seconds[i] + shared / static_cast<double>(n_jobs);
  }
}

}  // namespace

void check_replay_args(int64_t T, int64_t P, int64_t stride) {
  if (P < 1 || P >= T)
    throw UsageError("prefill P = " + std::to_string(P) + " must satisfy 1 <= P < T = " + std::to_string(T));
  if (stride <= 0) throw UsageError("stride = " + std::to_string(stride) + " must be >= 1");
}

std::vector<int64_t> bin_edges(int64_t P, int64_t T, int64_t bins) {
  bins = std::max<int64_t>(1, std::min(bins, T - P));
  std::vector<int64_t> e(bins + 1);
  for (int64_t b = 0; b <= bins; ++b) e[b] = P + (T - P) * b / bins;
  return e;
}

void replay_layer(const LayerView& lv, const RefStats& rs, int64_t layer, int64_t L, int64_t P,
                  std::span<const Strategy* const> strategies, const ReplayOptions& opt,
                  std::vector<ConfigResult>& results) {
  KVSIM_ASSERT(results.size() == strategies.size());
  const auto edges = bin_edges(P, lv.T, opt.bins);
  // States are made serially: resolving budgets may throw UsageError, which must not leave a thread.
  std::vector<Job> jobs;
  for (size_t c = 0; c < strategies.size(); ++c) {
    const Strategy& s = *strategies[c];
    KVSIM_ASSERT(!s.needs_prompt_colsums() || lv.prompt_colsums);
    const int64_t n_inst = s.layer_coupled() ? 1 : lv.Hkv;
    for (int64_t i = 0; i < n_inst; ++i) {
      InstanceContext ctx;
      ctx.layer = layer, ctx.n_layers = L, ctx.kv0 = s.layer_coupled() ? 0 : i;
      ctx.n_caches = s.layer_coupled() ? lv.Hkv : 1;
      ctx.T = lv.T, ctx.P = P, ctx.D = lv.D, ctx.G = lv.G();
      Job j;
      j.config = static_cast<int64_t>(c), j.kv0 = ctx.kv0, j.n_caches = ctx.n_caches;
      j.state = s.make_state(ctx);
      jobs.push_back(std::move(j));
    }
  }
  if (opt.backend == Backend::cuda || opt.attend_batch) {
    replay_layer_lockstep(lv, rs, layer, P, strategies, opt, edges, jobs, results);
    return;
  }
  const AttendFn attend = opt.backend == Backend::omp ? &omp::attend_slots : &ref::attend_slots;
  std::vector<double> seconds(jobs.size(), 0.0);
  const int64_t n_jobs = static_cast<int64_t>(jobs.size());
  auto body = [&](int64_t i) {
    const auto t0 = Clock::now();
    Job& j = jobs[i];
    run_instance(lv, rs, layer, P, *strategies[j.config], j, opt, attend, edges, results[j.config]);
    seconds[i] = since(t0);
  };
  if (opt.backend == Backend::omp) {
    parallel_jobs(n_jobs, body);
  } else {
    for (int64_t i = 0; i < n_jobs; ++i) body(i);
  }
  for (int64_t i = 0; i < n_jobs; ++i) results[jobs[i].config].seconds += seconds[i];
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
  res.T = sq.n_tokens, res.P = opt.prefill < 0 ? sq.prefill_len : opt.prefill, res.stride = opt.stride;
  res.L = hdr.n_layers, res.H = hdr.n_heads, res.Hkv = hdr.n_kv_heads, res.D = hdr.head_dim;
  res.eps = opt.eps, res.backend = opt.backend;
  check_replay_args(res.T, res.P, res.stride);
  res.bin_edges = bin_edges(res.P, res.T, opt.bins);
  // Resolve every budget against T before any work (bad budgets fail fast, exit 2).
  for (const Strategy* s : strategies) {
    InstanceContext ctx;
    ctx.n_layers = res.L, ctx.T = res.T, ctx.P = res.P, ctx.D = res.D, ctx.G = res.H / res.Hkv;
    ctx.n_caches = s->layer_coupled() ? res.Hkv : 1;
    (void)s->make_state(ctx);
    (void)s->codec().make_state(res.D, res.T);  // a codec group that does not fit D fails here, not in a thread
  }
  bool need_colsums = false;
  for (const Strategy* s : strategies) {
    need_colsums = need_colsums || s->needs_prompt_colsums();
    ConfigResult c;
    c.strategy = s->name(), c.spec = s->spec_text(), c.params = s->params();
    c.heads.resize(res.L * res.H);
    res.configs.push_back(std::move(c));
  }
  StatsCache cache(reader.path(), opt.seq, opt.backend, res.L, res.H, res.T, res.D, opt.stats_cache);
  res.stats_from_cache = cache.hit();
  RefStats rs;
  std::vector<float> k_norm, colsums;
  for (int64_t l = 0; l < res.L; ++l) {
    auto t0 = Clock::now();
    auto q = reader.read_layer(opt.seq, l, traces::Kind::q);
    auto k = reader.read_layer(opt.seq, l, traces::Kind::k);
    auto v = reader.read_layer(opt.seq, l, traces::Kind::v);
    res.read_seconds += since(t0);
    LayerView lv;
    lv.H = res.H, lv.Hkv = res.Hkv, lv.T = res.T, lv.D = res.D;
    lv.q = q.data(), lv.k = k.data(), lv.v = v.data();
    k_norm.assign(lv.Hkv * lv.T, 0.0f);
    for (int64_t i = 0; i < lv.Hkv * lv.T; ++i) {
      double s = 0;
      for (int64_t x = 0; x < lv.D; ++x) s += static_cast<double>(lv.k[i * lv.D + x]) * lv.k[i * lv.D + x];
      k_norm[i] = static_cast<float>(std::sqrt(s));
    }
    lv.k_norm = k_norm.data();
    t0 = Clock::now();
    if (!cache.load(l, rs)) {
      compute_ref_stats(lv, opt.backend, rs);
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
    if (opt.progress)
      opt.progress("layer " + std::to_string(l + 1) + "/" + std::to_string(res.L) + " done");
  }
  cache.finish();
  for (auto& c : res.configs) finalize_summaries(c);
  return res;
}

}  // namespace kvsim
