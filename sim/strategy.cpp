#include "sim/strategy.h"

#include <algorithm>
#include <functional>

#include "sim/error.h"
#include "sim/strategies.h"

namespace kvsim {

const Codec& identity_codec() {
  static const IdentityCodec c;
  return c;
}

Gqa parse_gqa(const std::string& s) {
  if (s == "mean") return Gqa::mean;
  if (s == "max") return Gqa::max;
  if (s == "sum") return Gqa::sum;
  throw UsageError("gqa=" + s + " is not one of mean, max, sum");
}

void combine_gqa(const float* w, int64_t G, int64_t n, Gqa how, float* out) {
  for (int64_t s = 0; s < n; ++s) {
    float acc = how == Gqa::max ? w[s] : 0.0f;
    for (int64_t g = 0; g < G; ++g) {
      float x = w[g * n + s];
      if (how == Gqa::max)
        acc = std::max(acc, x);
      else
        acc += x;
    }
    out[s] = how == Gqa::mean ? acc / static_cast<float>(G) : acc;
  }
}

namespace {
using Factory = std::unique_ptr<Strategy> (*)(ParamReader&);
const std::vector<std::pair<std::string, Factory>>& registry() {
  static const std::vector<std::pair<std::string, Factory>> r = {
      {"full", make_full},       {"window", make_window},   {"streaming", make_streaming},
      {"h2o", make_h2o},         {"tova", make_tova},       {"scissorhands", make_scissorhands},
      {"snapkv", make_snapkv},   {"pyramidkv", make_pyramidkv}, {"knorm", make_knorm},
      {"random", make_random},   {"entropy_merge", make_entropy_merge},
      {"cam", make_cam},         {"cms_topk", make_cms_topk},
      {"kvmerger", make_kvmerger},
  };
  return r;
}
}  // namespace

std::vector<std::string> strategy_names() {
  std::vector<std::string> n;
  for (const auto& [name, f] : registry()) n.push_back(name);
  return n;
}

std::unique_ptr<Strategy> make_strategy(const StrategySpec& spec) {
  for (const auto& [name, factory] : registry()) {
    if (name != spec.name) continue;
    ParamReader p(spec);
    auto s = factory(p);
    p.finish();
    return s;
  }
  std::string list;
  for (const auto& n : strategy_names()) list += (list.empty() ? "" : ", ") + n;
  throw UsageError("unknown strategy '" + spec.name + "' (valid: " + list + ")");
}

std::unique_ptr<Strategy> make_strategy(const std::string& spec_text) { return make_strategy(parse_spec(spec_text)); }

}  // namespace kvsim
