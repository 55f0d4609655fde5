#include "tools/sweep_config.h"

#include <glob.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "sim/base/error.h"
#include "sim/base/regular_file.h"
#include "sim/strategies/strategy.h"

namespace kvsim::tools {

namespace {

namespace fs = std::filesystem;

// Configurations one grid, and one config over all its entries, may expand to; counted before any
// list is built, so that an anchor reused on three axes is refused at once, not after 2.7 GB.
constexpr int64_t kMaxConfigs = 1000000;
// Values one range may hold (from/to/step or num).
constexpr int64_t kMaxRangeValues = 100000;

struct Ctx {
  std::string path;
  [[noreturn]] void fail(const YAML::Node& n, const std::string& msg) const {
    const YAML::Mark m = n.Mark();
    throw UsageError(path + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1) + ": " + msg);
  }
  // yaml-cpp keeps the first of two equal keys and drops the second without a word: refuse them.
  void unique_keys(const YAML::Node& map, const std::string& what) const {
    std::set<std::string> seen;
    for (const auto& kv : map) {
      const std::string k = scalar(kv.first, "a key of " + what);
      if (!seen.insert(k).second) fail(kv.first, "key '" + k + "' is given twice in " + what);
    }
  }
  void only_keys(const YAML::Node& map, std::initializer_list<const char*> keys, const std::string& what) const {
    unique_keys(map, what);
    for (const auto& kv : map) {
      const std::string k = kv.first.as<std::string>();
      if (std::none_of(keys.begin(), keys.end(), [&](const char* s) { return k == s; })) {
        std::string valid;
        for (const char* s : keys) valid += (valid.empty() ? "" : ", ") + std::string(s);
        fail(kv.first, "unknown key '" + k + "' in " + what + " (valid: " + valid + ")");
      }
    }
  }
  std::string scalar(const YAML::Node& n, const std::string& what) const {
    if (!n.IsScalar()) fail(n, what + " must be a scalar");
    return n.Scalar();
  }
  int64_t integer(const YAML::Node& n, const std::string& what) const {
    const std::string s = scalar(n, what);
    try {
      size_t used = 0;
      int64_t v = std::stoll(s, &used);
      if (used == s.size()) return v;
    } catch (...) {
    }
    fail(n, what + " = '" + s + "' is not an integer");
  }
  double number(const YAML::Node& n, const std::string& what) const {
    const std::string s = scalar(n, what);
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(s, &used);
    } catch (...) {
      used = 0;
    }
    if (used != s.size() || s.empty()) fail(n, what + " = '" + s + "' is not a number");
    if (!std::isfinite(v)) fail(n, what + " = '" + s + "' is not finite");
    return v;
  }
};

bool is_int_text(const std::string& s) { return !s.empty() && s.find_first_not_of("-0123456789") == std::string::npos; }

std::string format_number(double v, bool as_int) {
  if (as_int) return std::to_string(static_cast<int64_t>(std::llround(v)));
  std::ostringstream o;
  o.precision(10);
  o << v;
  return o.str();
}

// One value of a range as spec text. Integer ranges print exactly up to 2^53; a float range whose
// values collapse (to - from below a double's resolution) or overflow (1e308 + 1e308) is refused.
std::string range_value(const Ctx& c, const YAML::Node& n, const std::string& name, double v, bool as_int) {
  constexpr double kExactInt = 9007199254740992.0;  // 2^53
  if (!std::isfinite(v) || (as_int && std::fabs(v) > kExactInt))
    c.fail(n, "the range of '" + name + "' reaches " + format_number(v, false) +
                  (as_int ? " (integer ranges stay within +-2^53)" : " (not finite)"));
  return format_number(v, as_int);
}

// A grid parameter's values: a scalar, a list of scalars, or a range mapping.
std::vector<std::string> param_values(const Ctx& c, const YAML::Node& n, const std::string& name) {
  std::vector<std::string> out;
  if (n.IsScalar()) return {n.Scalar()};
  if (n.IsSequence()) {
    if (n.size() == 0) c.fail(n, "parameter '" + name + "' has an empty list");
    for (const auto& x : n) out.push_back(c.scalar(x, "a value of '" + name + "'"));
    return out;
  }
  if (!n.IsMap()) c.fail(n, "parameter '" + name + "' must be a value, a list or a range");
  c.only_keys(n, {"from", "to", "step", "num", "pow2"}, "the range of '" + name + "'");
  if (n["pow2"]) {
    const YAML::Node p = n["pow2"];
    if (!p.IsSequence() || p.size() != 2) c.fail(p, "pow2 of '" + name + "' must be [lo, hi]");
    const int64_t lo = c.integer(p[0], "pow2 lo"), hi = c.integer(p[1], "pow2 hi");
    if (lo < 0 || hi < lo || hi > 40)
      c.fail(p, "pow2 of '" + name + "' = [" + std::to_string(lo) + ", " + std::to_string(hi) +
                    "] must have 0 <= lo <= hi <= 40");
    for (int64_t e = lo; e <= hi; ++e) out.push_back(std::to_string(int64_t{1} << e));
    return out;
  }
  if (!n["from"] || !n["to"]) c.fail(n, "the range of '" + name + "' needs from and to (with step or num), or pow2");
  const double from = c.number(n["from"], "from"), to = c.number(n["to"], "to");
  const bool ints = is_int_text(n["from"].Scalar()) && is_int_text(n["to"].Scalar()) &&
                    (!n["step"] || is_int_text(n["step"].Scalar()));
  if (n["step"] && n["num"]) c.fail(n, "the range of '" + name + "' has both step and num");
  if (n["step"]) {
    const double step = c.number(n["step"], "step");
    if (!(step > 0)) c.fail(n["step"], "step of '" + name + "' = " + n["step"].Scalar() + " must be > 0");
    if (to < from) c.fail(n, "the range of '" + name + "' has to < from");
    const double steps = std::floor((to - from) / step + 1e-9) + 1;  // finite inputs; may still be huge
    if (!(steps <= static_cast<double>(kMaxRangeValues)))
      c.fail(n, "the range of '" + name + "' has " + format_number(steps, false) + " values (limit " +
                    std::to_string(kMaxRangeValues) + ")");
    const int64_t count = static_cast<int64_t>(steps);
    for (int64_t i = 0; i < count; ++i)
      out.push_back(range_value(c, n, name, from + static_cast<double>(i) * step, ints));
    return out;
  }
  if (n["num"]) {
    const int64_t num = c.integer(n["num"], "num");
    if (num < 1 || num > kMaxRangeValues)
      c.fail(n["num"], "num of '" + name + "' = " + std::to_string(num) + " must be in [1, " +
                           std::to_string(kMaxRangeValues) + "]");
    for (int64_t i = 0; i < num; ++i)
      out.push_back(range_value(
          c, n, name, num == 1 ? from : from + (to - from) * static_cast<double>(i) / static_cast<double>(num - 1),
          false));
    return out;
  }
  c.fail(n, "the range of '" + name + "' needs step or num");
}

// Expands name + grid into specs "name:k=v,...", cartesian product in the grid's key order; the
// product is counted first and must stay within kMaxConfigs.
std::vector<std::string> expand(const Ctx& c, const std::string& name, const YAML::Node& grid) {
  std::vector<std::pair<std::string, std::vector<std::string>>> axes;
  int64_t count = 1;
  if (grid) {
    if (!grid.IsMap()) c.fail(grid, "grid of '" + name + "' must be a mapping of parameter: values");
    c.unique_keys(grid, "the grid of '" + name + "'");
    for (const auto& kv : grid) {
      const std::string k = kv.first.as<std::string>();
      axes.push_back({k, param_values(c, kv.second, k)});
      count *= static_cast<int64_t>(axes.back().second.size());  // <= kMaxConfigs * kMaxRangeValues: no overflow
      if (count > kMaxConfigs)
        c.fail(grid, "grid of '" + name + "' expands to over " + std::to_string(kMaxConfigs) +
                         " configurations (at parameter '" + k + "')");
    }
  }
  std::vector<std::string> out = {""};
  for (const auto& [k, values] : axes) {
    std::vector<std::string> next;
    for (const auto& prefix : out)
      for (const auto& v : values) next.push_back(prefix + (prefix.empty() ? "" : ",") + k + "=" + v);
    out.swap(next);
  }
  for (auto& s : out) s = s.empty() ? name : name + ":" + s;
  return out;
}

std::vector<std::string> resolve_traces(const Ctx& c, const YAML::Node& n, const fs::path& base) {
  std::vector<std::string> out;
  std::vector<YAML::Node> items;
  if (n.IsScalar())
    items.push_back(n);
  else if (n.IsSequence())
    for (const auto& x : n) items.push_back(x);
  else
    c.fail(n, "traces must be a path or a list of paths/globs");
  for (const auto& it : items) {
    std::string p = c.scalar(it, "a trace path");
    if (fs::path(p).is_relative()) p = (base / p).lexically_normal().string();
    if (p.find_first_of("*?[") != std::string::npos) {
      glob_t g{};
      int rc = ::glob(p.c_str(), 0, nullptr, &g);
      std::vector<std::string> found;
      if (rc == 0)
        for (size_t i = 0; i < g.gl_pathc; ++i) found.push_back(g.gl_pathv[i]);
      globfree(&g);
      if (found.empty()) c.fail(it, "glob '" + p + "' matches no file");
      std::sort(found.begin(), found.end());
      out.insert(out.end(), found.begin(), found.end());
    } else {
      out.push_back(p);  // existence is checked per trace at run time: a bad trace fails its runs only
    }
  }
  if (out.empty()) c.fail(n, "no traces");
  return out;
}

}  // namespace

namespace {

// A node as a list: its items, or the node itself when it is not a sequence (`prefill: 64`).
std::vector<YAML::Node> as_list(const YAML::Node& n) {
  std::vector<YAML::Node> items;
  if (n.IsSequence())
    for (const auto& x : n) items.push_back(x);
  else
    items.push_back(n);
  return items;
}

// `protocol: evict | prefill | sparse` or a list of them, each once.
std::vector<std::string> parse_protocols(const Ctx& c, const YAML::Node& p) {
  const std::vector<YAML::Node> items = as_list(p);
  if (items.empty()) c.fail(p, "protocol: give evict, prefill, sparse or a list of them");
  std::vector<std::string> out;
  for (const auto& x : items) {
    const std::string name = c.scalar(x, "protocol");
    try {
      (void)parse_protocol(name);
    } catch (const UsageError& e) {
      c.fail(x, e.what());
    }
    if (std::find(out.begin(), out.end(), name) != out.end()) c.fail(x, "protocol " + name + " is listed twice");
    out.push_back(name);
  }
  return out;
}

// `prefill: trace | context | N` or a list of them, as codes (SweepPlan::prefills).
std::vector<int64_t> parse_prefills(const Ctx& c, const YAML::Node& p) {
  const std::vector<YAML::Node> items = as_list(p);
  if (items.empty()) c.fail(p, "prefill is an empty list");
  std::vector<int64_t> out;
  for (const auto& x : items) {
    int64_t v;
    if (x.IsScalar() && x.Scalar() == "trace") {
      v = -1;
    } else if (x.IsScalar() && x.Scalar() == "context") {
      v = -2;
    } else {
      v = c.integer(x, "prefill");
      if (v < 0) c.fail(x, "prefill = " + std::to_string(v) + " must be >= 0");
    }
    if (std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);
  }
  return out;
}

SweepPlan parse_text(const std::string& text, const std::string& path) {
  Ctx c{path};
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw UsageError(path + ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1) +
                     ": YAML error: " + e.msg);
  }
  if (!root.IsMap()) throw UsageError(path + ":1:1: a sweep config must be a mapping (name, traces, strategies, ...)");
  c.only_keys(root, {"name", "traces", "sequences", "prefill", "protocol", "stride", "backend", "strategies"},
              "the sweep config");
  SweepPlan plan;
  plan.path = path;
  plan.name = root["name"] ? c.scalar(root["name"], "name") : fs::path(path).stem().string();
  if (!root["traces"]) c.fail(root, "missing key 'traces'");
  fs::path base = fs::path(path).parent_path();
  plan.traces = resolve_traces(c, root["traces"], base.empty() ? fs::path(".") : base);
  if (const YAML::Node s = root["sequences"]) {
    if (s.IsScalar() && s.Scalar() == "all") {
    } else if (s.IsSequence()) {
      for (const auto& x : s) plan.sequences.push_back(c.scalar(x, "a sequence name"));
    } else {
      c.fail(s, "sequences must be 'all' or a list of sequence names");
    }
  }
  if (const YAML::Node p = root["prefill"])
    plan.prefills = parse_prefills(c, p);
  else
    plan.prefills.push_back(-1);
  const std::vector<int64_t> root_prefills = plan.prefills;
  if (const YAML::Node p = root["protocol"])
    plan.protocols = parse_protocols(c, p);
  else
    plan.protocols.push_back("evict");
  const std::vector<std::string> root_protocols = plan.protocols;
  if (root["stride"]) {
    plan.stride = c.integer(root["stride"], "stride");
    if (plan.stride < 1) c.fail(root["stride"], "stride = " + std::to_string(plan.stride) + " must be >= 1");
  }
  if (root["backend"]) plan.backend = c.scalar(root["backend"], "backend");

  const YAML::Node strategies = root["strategies"];
  if (!strategies) c.fail(root, "missing key 'strategies'");
  if (!strategies.IsSequence() || strategies.size() == 0) c.fail(strategies, "strategies must be a non-empty list");
  std::map<std::string, size_t> seen;  // spec -> its index in plan.specs
  int64_t total = 0;                   // configurations over all entries, before deduplication
  for (const auto& e : strategies) {
    if (!e.IsMap()) c.fail(e, "each strategy must be a mapping with name and grid");
    c.only_keys(e, {"name", "grid", "codecs", "prefill", "protocol"}, "a strategy entry");
    if (!e["name"]) c.fail(e, "a strategy entry needs a name");
    const std::string name = c.scalar(e["name"], "strategy name");
    std::vector<std::string> base_specs = expand(c, name, e["grid"]);
    std::vector<std::string> codec_specs = {""};
    if (const YAML::Node cs = e["codecs"]) {
      codec_specs.clear();
      const std::vector<YAML::Node> items = as_list(cs);
      for (const auto& x : items) {
        if (x.IsScalar()) {
          codec_specs.push_back(x.Scalar() == "none" ? "" : x.Scalar());
        } else if (x.IsMap()) {
          c.only_keys(x, {"name", "grid"}, "a codec entry");
          if (!x["name"]) c.fail(x, "a codec entry needs a name");
          for (auto& s : expand(c, c.scalar(x["name"], "codec name"), x["grid"])) codec_specs.push_back(s);
        } else {
          c.fail(x, "a codec must be a name, 'none', or {name, grid}");
        }
        if (static_cast<int64_t>(codec_specs.size()) > kMaxConfigs)
          c.fail(cs, "codecs of '" + name + "' expand to over " + std::to_string(kMaxConfigs) + " configurations");
      }
      if (codec_specs.empty()) c.fail(cs, "codecs of '" + name + "' is an empty list (give none for no codec)");
    }
    // Both factors are at most kMaxConfigs: the product fits int64.
    total += static_cast<int64_t>(base_specs.size()) * static_cast<int64_t>(codec_specs.size());
    if (total > kMaxConfigs)
      c.fail(e, "the strategies expand to over " + std::to_string(kMaxConfigs) + " configurations (at '" + name +
                    "', entry at line " + std::to_string(e.Mark().line + 1) + ")");
    const int line = e.Mark().line + 1;
    // An entry's own prefill and protocol replace the root's for its configurations (kvzip: at its scored
    // context, under prefill).
    const std::vector<int64_t> prefills = e["prefill"] ? parse_prefills(c, e["prefill"]) : root_prefills;
    const std::vector<std::string> protocols = e["protocol"] ? parse_protocols(c, e["protocol"]) : root_protocols;
    add_new(plan.prefills, prefills);
    add_new(plan.protocols, protocols);
    for (const auto& b : base_specs)
      for (const auto& cdc : codec_specs) {
        std::string spec = cdc.empty() ? b : b + "+" + cdc;
        if (auto it = seen.find(spec); it != seen.end()) {  // the same spec twice: the union of its lists
          add_new(plan.specs[it->second].prefills, prefills);
          add_new(plan.specs[it->second].protocols, protocols);
        } else {
          seen.emplace(spec, plan.specs.size());
          plan.specs.push_back({spec, line, prefills, protocols});
        }
      }
  }
  return plan;
}

}  // namespace

SweepPlan parse_sweep_config(const std::string& text, const std::string& path) {
  try {
    return parse_text(text, path);
  } catch (const YAML::Exception& e) {
    // A node of the wrong kind where the schema reads a scalar (a sequence as a grid key:
    // `grid: {[8, 16]: ...}`) is yaml-cpp's BadConversion: one line with its place, as every error.
    throw UsageError(path + ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1) +
                     ": YAML error: " + e.msg);
  }
}

SweepPlan load_sweep_config(const std::string& path) {
  require_regular_file(path, "sweep config");
  std::ifstream in(path);
  if (!in) throw UsageError(path + ": cannot read the sweep config (no such file?)");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_sweep_config(ss.str(), path);
}

}  // namespace kvsim::tools
