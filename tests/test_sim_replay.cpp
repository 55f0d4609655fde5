// The replay engine end to end on traces: full is exact, backends agree, stride, bytes, the
// reference-statistics sidecar. Integration input: a synthetic trace until the embedded real one
// lands; switching is one line (kIntegrationTrace).
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <unistd.h>

#include "sim/base/error.h"
#include "sim/replay.h"
#include "sim/stats_cache.h"
#include "sim/strategies/strategy.h"
#include "tests/cuda_emulation.h"
#include "tests/skip.h"
#include "traces/reader.h"
#include "traces/synth.h"

using namespace kvsim;
namespace fs = std::filesystem;

namespace {

// Set to a trace path to replace the synthetic input of the tests below (one line).
const char* const kIntegrationTrace = nullptr;
// The embedded real trace (recorded from stories260K); its tests report skipped when it is absent.
const std::string kRealTrace = KVSIM_SOURCE_DIR "/traces/samples/stories260K.h5";

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("kvsim_test_replay_" + std::to_string(::getpid()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

TempDir& tmp() {
  static TempDir d;
  return d;
}

// A small synthetic trace (seeded), written once per test binary run.
std::string trace(const std::string& shape, int64_t T, uint64_t seed, int64_t layers = -1) {
  if (kIntegrationTrace) return kIntegrationTrace;
  const std::string p = (tmp().path / (shape + "_" + std::to_string(T) + "_" + std::to_string(seed) + "_" +
                                       std::to_string(layers) + ".h5"))
                            .string();
  if (!fs::exists(p)) {
    traces::SynthOptions o;
    o.tokens = T, o.seed = seed, o.prefill = T / 3, o.layers = layers;
    traces::write_synthetic_trace(p, traces::find_synth_shape(shape), o);
  }
  return p;
}

struct Owned {
  std::vector<std::unique_ptr<Strategy>> own;
  std::vector<const Strategy*> ptrs;
  explicit Owned(const std::vector<std::string>& specs) {
    for (const auto& s : specs) own.push_back(make_strategy(s)), ptrs.push_back(own.back().get());
  }
};

ReplayResult replay(const std::string& path, const std::vector<std::string>& specs, Backend b, int64_t P = -1,
                    int64_t stride = 1, const std::string& cache = "off", int64_t seq = 0,
                    void (*attend_batch)(cuda::AttendBatch&) = nullptr) {
  traces::TraceReader r(path);
  Owned o(specs);
  ReplayOptions opt;
  opt.backend = b, opt.prefill = P, opt.stride = stride, opt.stats_cache = cache, opt.seq = seq;
  opt.attend_batch = attend_batch;
  return replay_trace(r, o.ptrs, opt);
}

// Every kind of rule: eviction per KV head and layer-coupled (tova), prompt-time (snapkv), merging,
// sketches with views (cms_aggregate), codecs with pending groups, and a composition.
const std::vector<std::string> kEveryKind = {"full",
                                             "window:budget=24",
                                             "h2o:budget=24,norm=mean",
                                             "tova:budget=24",
                                             "snapkv:budget=40,window=8",
                                             "entropy_merge:budget=24",
                                             "kvmerger:budget=24",
                                             "cms_aggregate:budget=20,width=8,depth=2",
                                             "cms_topk:budget=24,width=16,depth=2",
                                             "kivi:bits=2",
                                             "nf4:dq=1",
                                             "h2o:budget=40+quant:bits=4,axis=channel"};

double get(const ConfigResult& c, Metric m, const char* stat) {
  const auto& s = c.summary[int(m)];
  std::string st = stat;
  return st == "mean" ? s.mean : st == "worst" ? s.worst : st == "p5" ? s.p5 : st == "p50" ? s.p50 : s.p95;
}

std::vector<Backend> backends() {
  std::vector<Backend> b{Backend::ref};
  if (backend_available(Backend::omp)) b.push_back(Backend::omp);
  return b;
}

}  // namespace

TEST_CASE("replay: full is exact on every trace and backend (per head, worst step)") {
  for (auto [shape, T] : {std::pair<const char*, int64_t>{"tiny", 150}, {"stories260k", 130}})
    for (Backend b : backends()) {
      ReplayResult r = replay(trace(shape, T, 3), {"full"}, b, 10);
      INFO(shape << " backend " << backend_name(b));
      for (const auto& h : r.configs[0].heads) {
        INFO("layer " << h.layer << " head " << h.head);
        CHECK(h.summary[int(Metric::out_cos)].worst >= 1 - 1e-6);
        CHECK(h.summary[int(Metric::out_rel_l2)].worst <= 1e-6);
        CHECK(std::fabs(h.summary[int(Metric::mass)].worst - 1) <= 1e-6);
        CHECK(std::fabs(h.summary[int(Metric::mass)].p95 - 1) <= 1e-6);
        CHECK(h.summary[int(Metric::tv)].worst <= 1e-6);
        CHECK(h.summary[int(Metric::topk8_recall)].worst == 1.0);
        CHECK(h.summary[int(Metric::topk32_recall)].worst == 1.0);
        CHECK(h.summary[int(Metric::kl)].worst <= 1e-6);
        CHECK(h.summary[int(Metric::ratio)].worst == doctest::Approx(1.0));
        CHECK(h.summary[int(Metric::logit_rel_err)].worst == 0.0);
        CHECK(h.summary[int(Metric::k_rel_err)].worst == 0.0);
      }
    }
}

TEST_CASE("replay: ref and omp agree on every strategy's summaries") {
  KVSIM_REQUIRE_BACKEND(Backend::omp);
  const std::vector<std::string> specs = {"window:budget=24",
                                          "streaming:budget=24",
                                          "h2o:budget=24",
                                          "h2o:budget=24,norm=mean",
                                          "tova:budget=24",
                                          "scissorhands:budget=24",
                                          "snapkv:budget=40,window=8",
                                          "pyramidkv:budget=40,window=8",
                                          "knorm:budget=24",
                                          "random:budget=24,seed=1"};
  const std::string p = trace("stories260k", 130, 4);
  ReplayResult a = replay(p, specs, Backend::ref, 40), b = replay(p, specs, Backend::omp, 40);
  for (size_t c = 0; c < specs.size(); ++c)
    for (size_t h = 0; h < a.configs[c].heads.size(); ++h)
      for (int m = 0; m < kNumMetrics; ++m) {
        const double x = a.configs[c].heads[h].summary[m].mean, y = b.configs[c].heads[h].summary[m].mean;
        // Same kept sets (checked exactly in test_backend_attend); values differ by float rounding only.
        INFO(specs[c] << " head " << h << " " << metric_name(m) << " ref " << x << " omp " << y);
        CHECK(std::fabs(x - y) <= 1e-6 + 1e-5 * std::fabs(x));
      }
}

TEST_CASE("cuda-host: the lockstep replay of the cuda path, kernel emulated on the host, equals ref exactly") {
  // The cuda path advances every instance in lockstep and evaluates their caches in one batch per
  // step; with the kernel's host emulation (bit-identical to ref::attend_slots) every statistic of
  // every head must equal the ref replay's exactly: this checks the batching and unpacking.
  const std::string p = trace("stories260k", 130, 5);
  ReplayResult a = replay(p, kEveryKind, Backend::ref, 40, 3);
  ReplayResult b = replay(p, kEveryKind, Backend::ref, 40, 3, "off", 0, &test::emulate_attend_batch);
  int64_t compared = 0;
  for (size_t c = 0; c < kEveryKind.size(); ++c)
    for (size_t h = 0; h < a.configs[c].heads.size(); ++h)
      for (int m = 0; m < kNumMetrics; ++m) {
        const auto &x = a.configs[c].heads[h].summary[m], &y = b.configs[c].heads[h].summary[m];
        INFO(kEveryKind[c] << " head " << h << " " << metric_name(m) << " ref " << x.mean << " lockstep " << y.mean);
        auto same = [](double u, double v) { return u == v || (std::isnan(u) && std::isnan(v)); };
        CHECK(same(x.mean, y.mean));
        CHECK(same(x.p5, y.p5));
        CHECK(same(x.p95, y.p95));
        CHECK(same(x.worst, y.worst));
        CHECK(a.configs[c].heads[h].curve[m].size() == b.configs[c].heads[h].curve[m].size());
        ++compared;
      }
  CHECK(compared == int64_t(kEveryKind.size()) * 5 * 8 * kNumMetrics);  // synthetic stories260k: L = 5, H = 8
}

TEST_CASE("cuda: replay on the device agrees with ref on every kind of strategy") {
  KVSIM_REQUIRE_CUDA_DEVICE();
  const std::string p = trace("stories260k", 130, 5);
  ReplayResult a = replay(p, kEveryKind, Backend::ref, 40, 3), b = replay(p, kEveryKind, Backend::cuda, 40, 3);
  for (size_t c = 0; c < kEveryKind.size(); ++c)
    for (size_t h = 0; h < a.configs[c].heads.size(); ++h)
      for (int m = 0; m < kNumMetrics; ++m) {
        const double x = a.configs[c].heads[h].summary[m].mean, y = b.configs[c].heads[h].summary[m].mean;
        // Kept sets are the same (test_backend_attend); values differ by the device's exp only.
        INFO(kEveryKind[c] << " head " << h << " " << metric_name(m) << " ref " << x << " cuda " << y);
        CHECK(std::fabs(x - y) <= 1e-6 + 1e-5 * std::fabs(x));
      }
}

TEST_CASE("replay: backend cuda without a CUDA build or device fails with the reason, never falls back") {
  std::string why;
  if (backend_available(Backend::cuda, &why)) KVSIM_SKIP("a CUDA device can run here: nothing to refuse");
  CHECK_THROWS_WITH_AS(replay(trace("tiny", 60, 3), {"window:budget=8"}, Backend::cuda, 20), why.c_str(), NotCompiled);
  CHECK(why.rfind("backend cuda: ", 0) == 0);
}

TEST_CASE("replay: eviction strategies hold at most B + 1 slots (bytes), stride and curves") {
  // D = 8 (stories260k): fp16 K and V = 32 bytes per slot. window at B = 16 holds 17 slots while
  // attending (the new token joins before eviction): 544 bytes every step.
  const std::string p = trace("stories260k", 130, 5);
  ReplayResult r = replay(p, {"window:budget=16", "h2o:budget=16", "full"}, Backend::ref, 30, 7);
  const auto& w = r.configs[0];
  CHECK(get(w, Metric::bytes, "worst") == 17 * 32.0);
  CHECK(get(w, Metric::bytes, "p5") == 17 * 32.0);
  // h2o also holds one fp32 score per slot: 17 x 32 + 17 x 4.
  CHECK(get(r.configs[1], Metric::bytes, "worst") == 17 * 36.0);
  // stride 7 over t = 30..129: t = 30, 37, ..., 128 -> 15 steps per head.
  CHECK(w.heads[0].summary[0].n == 15);
  CHECK(r.bin_edges.front() == 30);
  CHECK(r.bin_edges.back() == 130);
  // The full cache's ratio is 1 at every step; window's curve falls as t grows (17 slots / (t+1)).
  CHECK(get(r.configs[2], Metric::ratio, "mean") == doctest::Approx(1.0));
  CHECK(w.curve[int(Metric::ratio)].front() > w.curve[int(Metric::ratio)].back());
}

TEST_CASE("replay: bad arguments fail with the numbers") {
  const std::string p = trace("tiny", 40, 6);
  // The message names the trace and the sequence first.
  CHECK_THROWS_WITH_AS(replay(p, {"full"}, Backend::ref, 40),
                       (p + ": sequence 0000: prefill P = 40 must satisfy 1 <= P < T = 40").c_str(), UsageError);
  CHECK_THROWS_AS(replay(p, {"full"}, Backend::ref, 0), UsageError);
  CHECK_THROWS_WITH_AS(replay(p, {"full"}, Backend::ref, 10, 0),
                       (p + ": sequence 0000: stride = 0 must be >= 1").c_str(), UsageError);
  // ratio budgets resolve against T before any work: 0.05 x 40 = 2 slots <= recent 1 + sinks 1.
  CHECK_THROWS_AS(replay(p, {"h2o:ratio=0.05,sinks=1,recent=1"}, Backend::ref, 10), UsageError);
}

TEST_CASE("replay: the reference sidecar is written atomically, reused, and refused when stale") {
  const std::string p = trace("tiny", 90, 8);
  const std::string dir = (tmp().path / "cache").string();
  fs::create_directories(dir);
  ReplayResult a = replay(p, {"h2o:budget=20"}, Backend::ref, 30, 1, dir);
  CHECK_FALSE(a.stats_from_cache);
  int files = 0;
  fs::path sidecar;
  for (const auto& e : fs::directory_iterator(dir)) ++files, sidecar = e.path();
  CHECK(files == 1);  // no .partial left behind
  CHECK(sidecar.string().find(".s0.ref.kvstats") != std::string::npos);
  ReplayResult b = replay(p, {"h2o:budget=20"}, Backend::ref, 30, 1, dir);
  CHECK(b.stats_from_cache);
  for (int m = 0; m < kNumMetrics; ++m) CHECK(a.configs[0].summary[m].mean == b.configs[0].summary[m].mean);
  // A truncated sidecar is not trusted: recomputed (and replaced).
  fs::resize_file(sidecar, fs::file_size(sidecar) / 2);
  ReplayResult c = replay(p, {"h2o:budget=20"}, Backend::ref, 30, 1, dir);
  CHECK_FALSE(c.stats_from_cache);
  CHECK(c.configs[0].summary[0].mean == a.configs[0].summary[0].mean);
  CHECK(replay(p, {"h2o:budget=20"}, Backend::ref, 30, 1, dir).stats_from_cache);
  // The key is the content hash: another trace's sidecar never matches.
  CHECK(file_content_hash(p) != file_content_hash(trace("tiny", 90, 9)));
}

TEST_CASE("replay: the trace content hash is remembered per process until the file changes") {
  // Expected values: the hash of a copy at a path never hashed before (computed from the bytes).
  const fs::path x = tmp().path / "hash_me.bin";
  auto write = [](const fs::path& p, const std::string& bytes) { std::ofstream(p, std::ios::binary) << bytes; };
  auto fresh_hash = [&](const std::string& bytes, const char* name) {
    const fs::path y = tmp().path / name;
    write(y, bytes);
    return file_content_hash(y.string());
  };
  const std::string a(1000, 'a'), b(1000, 'b'), c(1000, 'c');
  write(x, a);
  const uint64_t ha = file_content_hash(x.string());
  CHECK(ha == fresh_hash(a, "copy_a.bin"));
  CHECK(file_content_hash(x.string()) == ha);  // remembered
  // A new file renamed into place (as the trace writer does): a new inode, a new hash.
  const fs::path staged = tmp().path / "hash_me.bin.partial";
  write(staged, b);
  fs::rename(staged, x);
  const uint64_t hb = file_content_hash(x.string());
  CHECK(hb != ha);
  CHECK(hb == fresh_hash(b, "copy_b.bin"));
  // Rewritten in place with the same size: the modification time moves, the hash follows.
  write(x, c);
  fs::last_write_time(x, fs::last_write_time(x) + std::chrono::seconds(5));
  CHECK(file_content_hash(x.string()) == fresh_hash(c, "copy_c.bin"));
}

TEST_CASE("replay: full is exact on the embedded real trace, every sequence") {
  if (!fs::exists(kRealTrace)) KVSIM_SKIP(kRealTrace << " not found");
  traces::TraceReader r(kRealTrace);
  for (int64_t seq = 0; seq < int64_t(r.sequences().size()); ++seq) {
    ReplayResult res =
        replay(kRealTrace, {"full"}, fastest_backend() == Backend::cuda ? Backend::omp : fastest_backend(), 128, 1,
               "off", seq);
    INFO("sequence " << r.sequence(seq).name);
    for (const auto& h : res.configs[0].heads) {
      CHECK(h.summary[int(Metric::out_cos)].worst >= 1 - 1e-6);
      CHECK(h.summary[int(Metric::out_rel_l2)].worst <= 1e-6);
      CHECK(std::fabs(h.summary[int(Metric::mass)].worst - 1) <= 1e-6);
      CHECK(h.summary[int(Metric::tv)].worst <= 1e-6);
      CHECK(h.summary[int(Metric::topk32_recall)].worst == 1.0);
      CHECK(h.summary[int(Metric::kl)].worst <= 1e-6);
    }
  }
}

TEST_CASE("replay: reference outputs equal the model's own attention output o (real trace)") {
  if (!fs::exists(kRealTrace)) KVSIM_SKIP(kRealTrace << " not found");
  traces::TraceReader r(kRealTrace);
  for (int64_t seq = 0; seq < int64_t(r.sequences().size()); ++seq) {
    if (!r.has(seq, traces::Kind::o)) continue;
    for (int64_t l = 0; l < r.header().n_layers; ++l) {
      auto q = r.read_layer(seq, l, traces::Kind::q), k = r.read_layer(seq, l, traces::Kind::k),
           v = r.read_layer(seq, l, traces::Kind::v), o = r.read_layer(seq, l, traces::Kind::o);
      LayerView lv;
      lv.H = r.header().n_heads, lv.Hkv = r.header().n_kv_heads, lv.T = r.sequence(seq).n_tokens;
      lv.D = r.header().head_dim, lv.q = q.data(), lv.k = k.data(), lv.v = v.data();
      ExactStats rs;
      compute_exact_stats(lv, Backend::ref, rs);
      double worst = 0;
      for (size_t i = 0; i < rs.o.size(); ++i) worst = std::max(worst, double(std::fabs(rs.o[i] - o.data()[i])));
      INFO("sequence " << seq << " layer " << l << " max |o_ref - o_model| = " << worst);
      CHECK(worst < 1e-4);  // the model computed o in float with its own summation order
    }
  }
}

// Heavy: skipped in the default run, executed by the ctest entry `slow.sim_replay` (LABELS slow,
// Release builds only in CI), which passes --no-skip.
TEST_CASE("slow: llama3-8b-shape slice, omp and ref agree and full is exact" * doctest::skip()) {
  const std::string p = trace("llama3-8b", 320, 11, 4);  // 4 layers of H = 32, Hkv = 8, D = 128
  const std::vector<std::string> specs = {"full", "h2o:budget=64", "tova:budget=64", "snapkv:budget=96"};
  ReplayResult a = replay(p, specs, Backend::ref, 100, 3);
  for (const auto& h : a.configs[0].heads) {
    CHECK(h.summary[int(Metric::out_cos)].worst >= 1 - 1e-6);
    CHECK(std::fabs(h.summary[int(Metric::mass)].worst - 1) <= 1e-6);
    CHECK(h.summary[int(Metric::kl)].worst <= 1e-6);
  }
  if (!backend_available(Backend::omp)) {
    MESSAGE("the omp half not run: built without OpenMP (the ref half above ran)");
    return;
  }
  ReplayResult b = replay(p, specs, Backend::omp, 100, 3);
  for (size_t c = 0; c < specs.size(); ++c)
    for (int m = 0; m < kNumMetrics; ++m) {
      const double x = a.configs[c].summary[m].mean, y = b.configs[c].summary[m].mean;
      INFO(specs[c] << " " << metric_name(m) << " ref " << x << " omp " << y);
      CHECK(std::fabs(x - y) <= 1e-6 + 1e-5 * std::fabs(x));
    }
}
