// The sidecar (.kvstats) reader: the input is the sidecar of fixtures/tiny.h5's sequence 0 for
// backend ref, put where the statistics cache looks for it; the trace is then replayed with the
// cache on (`kvsim run --stats-cache DIR`), so whatever the reader accepts feeds the metrics.
// Seed: corpus/sidecar/, the valid sidecar; mutations of its body reach the metrics.
#include <filesystem>
#include <vector>

#include "sim/replay.h"
#include "sim/stats_cache.h"
#include "sim/strategies/strategy.h"
#include "tests/fuzz/fuzz_util.h"
#include "traces/reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  static const std::string trace = [] {
    const std::string t = kvsim::fuzz::scratch("tiny.h5");
    fs::copy_file(kvsim::fuzz::fixture("tiny.h5"), t);
    return t;
  }();
  static const std::string dir = kvsim::fuzz::scratch("stats");
  static const kvsim::traces::TraceReader reader(trace);
  static const std::string sidecar = [] {
    const auto& h = reader.header();
    const auto& s = reader.sequence(0);
    kvsim::StatsCache c(trace, 0, kvsim::Backend::ref, h.n_layers, h.n_heads, s.n_tokens, h.head_dim, dir);
    return c.path();
  }();
  static const auto strategies = [] {
    std::vector<std::unique_ptr<kvsim::Strategy>> v;
    v.push_back(kvsim::make_strategy("window:budget=8"));
    v.push_back(kvsim::make_strategy("h2o:budget=8+kivi:bits=2"));
    return v;
  }();
  kvsim::fuzz::write_file(sidecar, data, size);
  kvsim::fuzz::expect_clean([&] {
    kvsim::ReplayOptions opt;
    opt.stats_cache = dir;
    opt.backend = kvsim::Backend::ref;
    std::vector<const kvsim::Strategy*> s;
    for (const auto& p : strategies) s.push_back(p.get());
    (void)kvsim::replay_trace(reader, s, opt);
  });
  return 0;
}
