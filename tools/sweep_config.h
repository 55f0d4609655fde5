// Sweep configurations (YAML): which traces, which prefill/stride, and per strategy a grid of
// parameters (lists and ranges), optionally composed with storage codecs. Parsing expands the
// grid into a flat list of strategy specs `name:key=value,...[+codec:key=value,...]`; errors
// name the file, line and column.
//
//   name: quick
//   traces: [traces/samples/*.h5]        # paths or globs, relative to the config file or absolute
//   sequences: all                        # or a list of sequence names
//   prefill: [128]                        # a number or a list; `trace` = the trace's own prefill_len,
//                                         # `context` = the sequence's context_len (query-agnostic)
//   protocol: [evict, prefill]            # a name or a list (default evict): STRATEGIES.md
//   stride: 4
//   strategies:
//     - name: h2o
//       grid:
//         budget: [32, 64, 128]           # a list ...
//         recent: {from: 8, to: 32, step: 8}   # ... or a range: from/to (inclusive) with step or num,
//         norm: sum                        #     or {pow2: [5, 8]} for 32, 64, 128, 256
//       codecs: [none, {name: kivi, grid: {bits: [2, 4]}}]
//     - name: kvzip
//       grid: {budget: [64]}
//       prefill: [384]                     # an entry's own prefill and protocol replace the root's for its
//       protocol: prefill                  #   configurations
//
// Limits, checked before anything is expanded: 1,000,000 configurations per grid and over all
// entries, 100,000 values per range; duplicate keys, nan/inf, ranges that overflow (or pass 2^53 as
// integers) and empty lists are errors.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace kvsim::tools {

struct SweepSpec {
  std::string spec;
  int line = 0;  // line of the strategy entry in the config, for messages
  // The prefills (codes as SweepPlan::prefills) and protocols it runs at: the entry's own `prefill` and
  // `protocol`, else the root's.
  std::vector<int64_t> prefills;
  std::vector<std::string> protocols;
};

// Appends to `to` the items of `from` it does not hold yet, in order.
template <class T>
void add_new(std::vector<T>& to, const std::vector<T>& from) {
  for (const T& x : from)
    if (std::find(to.begin(), to.end(), x) == to.end()) to.push_back(x);
}

struct SweepPlan {
  std::string path, name;
  std::vector<std::string> traces;     // resolved paths, in config order, globs sorted
  std::vector<std::string> sequences;  // empty: all
  // -1 (`trace`): the sequence's prefill_len; -2 (`context`): its context_len; the root's list, then what
  // entries add with their own `prefill`
  std::vector<int64_t> prefills;
  std::vector<std::string> protocols;  // evict | prefill | sparse, in config order (default: evict), then entries' own
  int64_t stride = 1;
  std::string backend = "auto";
  std::vector<SweepSpec> specs;  // deduplicated, in grid order
};

// Throws UsageError "CONFIG:LINE:COL: message" for YAML and schema errors.
SweepPlan load_sweep_config(const std::string& path);
// Parses YAML text (path only names the source in messages and anchors relative trace paths).
SweepPlan parse_sweep_config(const std::string& text, const std::string& path);

}  // namespace kvsim::tools
