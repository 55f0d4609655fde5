// The JSON that `kvsim run --json` and `kvsim info --json` print, shared with the Python module
// (tools/python/), so a notebook gets exactly the CLI's numbers.
#pragma once

#include <nlohmann/json.hpp>

#include "sim/replay.h"
#include "traces/reader.h"

namespace kvsim::tools {

// A finite number, or null (JSON has no NaN).
nlohmann::json json_number(double x);

// `kvsim run --json`: the replay's shape, timing and one object per configuration (summaries,
// curves, warnings; per-(layer, head) summaries with per_head).
nlohmann::json run_json(const ReplayResult& r, bool per_head);

// `kvsim info --json` without --check: the trace's header and its sequences.
nlohmann::json trace_info_json(const traces::TraceReader& r);

}  // namespace kvsim::tools
