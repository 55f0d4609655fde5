// The strategy-spec parser (`--strategy SPEC`): the input is the spec text. A spec that parses is
// replayed on fixtures/tiny.h5 (T = 12, P = 6) as `kvsim run` would, so parameter values are
// checked against a real shape too (protocol sparse for selectors, evict otherwise).
#include <memory>
#include <vector>

#include "sim/replay.h"
#include "sim/strategies/strategy.h"
#include "tests/fuzz/fuzz_util.h"
#include "traces/reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const kvsim::traces::TraceReader reader(kvsim::fuzz::fixture("tiny.h5"));
  const std::string text(reinterpret_cast<const char*>(data), size);
  kvsim::fuzz::expect_clean([&] {
    std::unique_ptr<kvsim::Strategy> s = kvsim::make_strategy(text);
    kvsim::ReplayOptions opt;
    opt.stats_cache = "off";
    opt.protocol = s->is_selector() ? kvsim::Protocol::sparse : kvsim::Protocol::evict;
    const std::vector<const kvsim::Strategy*> strategies = {s.get()};
    (void)kvsim::replay_trace(reader, strategies, opt);
  });
  return 0;
}
