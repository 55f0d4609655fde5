// A program built on the installed kvsim package (tests/package/CMakeLists.txt; ctest `package`
// installs kvsim, builds this and checks what it prints): makes a strategy, writes a small
// synthetic trace and replays it through the strategy on the omp backend.
#include <cstdio>
#include <exception>

#include "sim/replay.h"
#include "sim/strategies/strategy.h"
#include "traces/reader.h"
#include "traces/synth.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT.h5\n", argv[0]);
    return 2;
  }
  try {
    auto h2o = kvsim::make_strategy("h2o:budget=8");
    std::printf("strategy %s budget=%s\n", h2o->name().c_str(), h2o->params().at("budget").c_str());

    kvsim::traces::SynthOptions so;
    so.tokens = 40;
    so.seed = 7;
    kvsim::traces::write_synthetic_trace(argv[1], kvsim::traces::find_synth_shape("tiny"), so);
    kvsim::traces::TraceReader reader(argv[1]);
    auto full = kvsim::make_strategy("full");
    const kvsim::Strategy* strategies[] = {full.get(), h2o.get()};
    kvsim::ReplayOptions opt;
    opt.backend = kvsim::Backend::omp;
    opt.stats_cache = "off";
    const kvsim::ReplayResult r = kvsim::replay_trace(reader, strategies, opt);
    for (const auto& c : r.configs)
      std::printf("replay %s T=%lld P=%lld mass=%.4f\n", c.strategy.c_str(), static_cast<long long>(r.T),
                  static_cast<long long>(r.P), c.summary[static_cast<int>(kvsim::Metric::mass)].mean);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
