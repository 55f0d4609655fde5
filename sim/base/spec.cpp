#include "sim/base/spec.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "sim/base/error.h"

namespace kvsim {

namespace {
std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}
std::string fmt_double(double v) {
  std::ostringstream o;
  o << v;
  return o.str();
}
}  // namespace

StrategySpec parse_spec(const std::string& text) {
  StrategySpec spec;
  spec.text = text;
  size_t colon = text.find(':');
  spec.name = trim(text.substr(0, colon));
  if (spec.name.empty()) throw UsageError("strategy '" + text + "': empty name (expected name:key=value,...)");
  if (colon == std::string::npos) return spec;
  std::string rest = text.substr(colon + 1);
  std::stringstream ss(rest);
  std::string item, last;
  while (std::getline(ss, item, ',')) {
    item = trim(item);
    if (item.empty()) continue;
    size_t eq = item.find('=');
    // A bare integer continues the previous value as a list: dense_layers=0,1 (ParamReader::get_int_list).
    const bool list_item =
        eq == std::string::npos && !last.empty() && item.find_first_not_of("0123456789") == std::string::npos;
    if (list_item) {
      std::string& v = spec.params[last];
      v += (v.empty() ? "" : ",") + item;
      continue;
    }
    if (eq == std::string::npos || eq == 0)
      throw UsageError("strategy '" + text + "': parameter '" + item + "' is not key=value");
    std::string k = trim(item.substr(0, eq)), v = trim(item.substr(eq + 1));  // v may be empty: an empty list
    if (spec.params.count(k)) throw UsageError("strategy '" + text + "': parameter '" + k + "' given twice");
    spec.params[k] = v;
    last = k;
  }
  return spec;
}

const std::string* ParamReader::raw(const std::string& key) {
  if (std::find(known_.begin(), known_.end(), key) == known_.end()) known_.push_back(key);
  auto it = spec_.params.find(key);
  return it == spec_.params.end() ? nullptr : &it->second;
}

bool ParamReader::has(const std::string& key) { return raw(key) != nullptr; }

namespace {
// Parses one integer of `text` (a whole parameter value or one list item); false if it is not one.
// Beyond int64 it is out of every range: `out` is then one past the range's end (in_range below).
bool parse_int(const std::string& text, int64_t& out, bool& overflow) {
  char* end = nullptr;
  errno = 0;
  long long x = std::strtoll(text.c_str(), &end, 10);
  if (end == text.c_str() || *end != '\0') return false;
  overflow = errno == ERANGE;
  out = static_cast<int64_t>(x);
  return true;
}
bool in_range(int64_t v, bool overflow, IntRange r) { return !overflow && v >= r.lo && v <= r.hi; }
std::string range_str(IntRange r) { return "[" + std::to_string(r.lo) + ", " + std::to_string(r.hi) + "]"; }
}  // namespace

int64_t ParamReader::get_int(const std::string& key, int64_t def, IntRange range, const std::string&) {
  const std::string* s = raw(key);
  int64_t v = def;
  if (s) {
    bool overflow = false;
    if (!parse_int(*s, v, overflow))
      throw UsageError("strategy '" + spec_.text + "': " + key + "=" + *s + " is not an integer");
    if (!in_range(v, overflow, range))
      throw UsageError("strategy '" + spec_.text + "': " + key + "=" + *s + " must be in " + range_str(range));
  }
  resolved_[key] = std::to_string(v);
  return v;
}

bool ParamReader::get_flag(const std::string& key, bool def, const std::string& doc) {
  return get_int(key, def ? 1 : 0, IntRange{0, 1}, doc) == 1;
}

uint64_t ParamReader::get_seed(const std::string& key, const std::string& doc) {
  return static_cast<uint64_t>(get_int(key, 0, IntRange{0, INT64_MAX}, doc));
}

std::vector<int64_t> ParamReader::get_int_list(const std::string& key, const std::vector<int64_t>& def,
                                               IntRange range) {
  const std::string* s = raw(key);
  std::vector<int64_t> v = def;
  if (s) {
    v.clear();
    std::stringstream ss(*s);
    std::string item;
    while (std::getline(ss, item, ',')) {
      int64_t x = 0;
      bool overflow = false;
      if (!parse_int(item, x, overflow))
        throw UsageError("strategy '" + spec_.text + "': " + key + "=" + *s +
                         " is not a list of integers (a,b,c; empty for none)");
      if (!in_range(x, overflow, range))
        throw UsageError("strategy '" + spec_.text + "': " + key + " holds " + item + ", outside " + range_str(range));
      v.push_back(x);
    }
  }
  std::string text;
  for (int64_t x : v) text += (text.empty() ? "" : ",") + std::to_string(x);
  resolved_[key] = text;
  return v;
}

double ParamReader::get_double(const std::string& key, double def, const std::string&) {
  const std::string* s = raw(key);
  double v = def;
  if (s) {
    char* end = nullptr;
    errno = 0;
    v = std::strtod(s->c_str(), &end);
    if (errno || end == s->c_str() || *end != '\0' || !std::isfinite(v))
      throw UsageError("strategy '" + spec_.text + "': " + key + "=" + *s + " is not a number");
  }
  resolved_[key] = fmt_double(v);
  return v;
}

std::string ParamReader::get_string(const std::string& key, const std::string& def) {
  const std::string* s = raw(key);
  resolved_[key] = s ? *s : def;
  return resolved_[key];
}

std::string ParamReader::get_choice(const std::string& key, const std::vector<std::string>& choices) {
  const std::string* s = raw(key);
  std::string v = s ? *s : choices.front();
  if (std::find(choices.begin(), choices.end(), v) == choices.end()) {
    std::string list;
    for (const auto& c : choices) list += (list.empty() ? "" : ", ") + c;
    throw UsageError("strategy '" + spec_.text + "': " + key + "=" + v + " is not one of " + list);
  }
  resolved_[key] = v;
  return v;
}

void ParamReader::finish() const {
  for (const auto& [k, v] : spec_.params) {
    if (std::find(known_.begin(), known_.end(), k) != known_.end()) continue;
    std::string list;
    for (const auto& c : known_) list += (list.empty() ? "" : ", ") + c;
    throw UsageError("strategy '" + spec_.text + "': unknown parameter '" + k + "' for " + spec_.name +
                     (list.empty() ? " (it takes no parameters)" : " (valid: " + list + ")"));
  }
}

}  // namespace kvsim
