// Strategy specifications on the command line: `name:key=value,key=value` (design.md §5, §6).
// ParamReader hands out typed parameters and, at the end, rejects any key nobody asked for with a
// message listing the parameters the strategy accepts. Every integer parameter is checked against a
// range (IntRange) before any arithmetic sees it: integers count tokens, slots, channels, bits,
// layers or iterations, so none exceeds kMaxIntParam = 2^31 - 1 (positions are int32), and sums or
// products of two parameters and a shape stay far inside int64. Seeds alone take [0, 2^63 - 1].
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace kvsim {

inline constexpr int64_t kMaxIntParam = INT32_MAX;

// Inclusive bounds of an integer parameter; the default: 0 .. kMaxIntParam.
struct IntRange {
  int64_t lo = 0, hi = kMaxIntParam;
};

struct StrategySpec {
  std::string name;
  std::map<std::string, std::string> params;  // as written, in key order
  std::string text;                           // the spec as given
};

// Parses "name" or "name:k=v,k=v". A bare integer after k=v extends v as a list ("k=0,1"); "k=" is an
// empty value. Throws UsageError on malformed text or a repeated key.
StrategySpec parse_spec(const std::string& text);

class ParamReader {
 public:
  explicit ParamReader(const StrategySpec& spec) : spec_(spec) {}
  const StrategySpec& spec() const { return spec_; }
  bool has(const std::string& key);
  // UsageError "strategy 'SPEC': KEY=V must be in [lo, hi]" outside `range`.
  int64_t get_int(const std::string& key, int64_t def, IntRange range, const std::string& doc = "");
  int64_t get_int(const std::string& key, int64_t def, const std::string& doc = "") {
    return get_int(key, def, IntRange{}, doc);
  }
  // A switch: 0 or 1, nothing else (`prefix=-1` would otherwise be a second name for prefix=1).
  bool get_flag(const std::string& key, bool def, const std::string& doc = "");
  // A seed: any integer in [0, 2^63 - 1].
  uint64_t get_seed(const std::string& key, const std::string& doc = "");
  double get_double(const std::string& key, double def, const std::string& doc = "");
  // A comma-separated list of integers (`dense_layers=0,1`; `dense_layers=` is the empty list), each
  // in `range`.
  std::vector<int64_t> get_int_list(const std::string& key, const std::vector<int64_t>& def, IntRange range = {});
  // The raw text of a value (a codec's `protect=sinks:4` or `protect=0,5,9`), for the caller to parse.
  std::string get_string(const std::string& key, const std::string& def);
  // One of `choices`; the first is the default.
  std::string get_choice(const std::string& key, const std::vector<std::string>& choices);
  // Throws UsageError naming unknown keys and listing the known ones.
  void finish() const;
  // Resolved parameters (defaults filled in), for reports.
  const std::map<std::string, std::string>& resolved() const { return resolved_; }
  void set_resolved(const std::string& key, const std::string& value) { resolved_[key] = value; }

 private:
  const std::string* raw(const std::string& key);
  const StrategySpec& spec_;
  std::vector<std::string> known_;
  std::map<std::string, std::string> resolved_;
};

}  // namespace kvsim
