#include "sim/prefix_workload.h"

#include <cmath>

#include "sim/base/error.h"
#include "sim/base/spec.h"
#include "sim/base/splitmix.h"

namespace kvsim {

namespace {

class Draw {
 public:
  Draw(uint64_t seed, int64_t vocab) : s_(seed), vocab_(vocab) {}
  double uniform() { return static_cast<double>(splitmix64(s_) >> 11) * 0x1.0p-53; }  // [0, 1)
  int64_t below(int64_t n) { return static_cast<int64_t>(splitmix64(s_) % static_cast<uint64_t>(n)); }
  int64_t about(int64_t n) { return n / 2 + below(n + 1); }  // uniform in [n/2, n/2 + n]
  std::vector<int32_t> tokens(int64_t n) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& x : t) x = static_cast<int32_t>(3 + below(vocab_ - 3));
    return t;
  }
  double gap(double rate) { return -std::log1p(-uniform()) / rate; }

 private:
  uint64_t s_;
  int64_t vocab_;
};

int64_t positive(ParamReader& p, const std::string& kind, const std::string& key, int64_t def) {
  const int64_t v = p.get_int(key, def);
  if (v < 1) throw UsageError("--synth " + kind + ": " + key + "=" + std::to_string(v) + " must be >= 1");
  return v;
}

void append(std::vector<int32_t>& to, const std::vector<int32_t>& x) { to.insert(to.end(), x.begin(), x.end()); }

// Sessions that grow: session s starts from base[s] and, at each turn, appends a fresh piece (the
// user turn, the observation) and sends everything so far; after a turn its reply is appended.
// Requests go turn-major across sessions.
std::vector<PrefixRequest> growing_sessions(Draw& d, const std::string& kind, std::vector<std::vector<int32_t>> base,
                                            int64_t turns, int64_t piece, int64_t reply) {
  std::vector<PrefixRequest> out;
  for (int64_t j = 0; j < turns; ++j)
    for (size_t s = 0; s < base.size(); ++s) {
      append(base[s], d.tokens(d.about(piece)));
      out.push_back({base[s], 0.0, kind + "-" + std::to_string(s)});
      if (reply > 0) append(base[s], d.tokens(d.about(reply)));
    }
  return out;
}

}  // namespace

std::vector<std::string> prefix_workload_kinds() { return {"system-prompt", "chat", "agent", "random"}; }

std::vector<PrefixRequest> synth_prefix_workload(const std::string& text, int64_t vocab) {
  if (vocab < 4) throw UsageError("--synth: vocabulary of " + std::to_string(vocab) + " tokens is too small (>= 4)");
  const StrategySpec spec = parse_spec(text);
  ParamReader p(spec);
  const std::string& k = spec.name;
  const int64_t seed = p.get_int("seed", 0);
  const double rate = p.get_double("rate", 1.0);
  if (!(rate > 0) || !std::isfinite(rate))
    throw UsageError("--synth " + k + ": rate=" + std::to_string(rate) + " must be > 0 requests per second");
  Draw d(static_cast<uint64_t>(seed), vocab);
  std::vector<PrefixRequest> out;
  if (k == "system-prompt") {
    const int64_t n = positive(p, k, "requests", 200), sys = positive(p, k, "system", 1024);
    const int64_t user = positive(p, k, "user", 128), prompts = positive(p, k, "prompts", 1);
    const double zipf = p.get_double("zipf", 0.0);
    if (!(zipf >= 0) || !std::isfinite(zipf))
      throw UsageError("--synth system-prompt: zipf=" + std::to_string(zipf) + " must be >= 0");
    std::vector<std::vector<int32_t>> system;
    std::vector<double> cdf;  // prompt k with probability proportional to 1 / (k + 1)^zipf
    for (int64_t i = 0; i < prompts; ++i) {
      system.push_back(d.tokens(sys));
      cdf.push_back((cdf.empty() ? 0.0 : cdf.back()) + std::pow(static_cast<double>(i + 1), -zipf));
    }
    for (int64_t i = 0; i < n; ++i) {
      int64_t k = 0;
      if (zipf == 0) {
        k = d.below(prompts);
      } else {
        const double u = d.uniform() * cdf.back();
        while (k + 1 < prompts && cdf[static_cast<size_t>(k)] <= u) ++k;
      }
      std::vector<int32_t> ids = system[static_cast<size_t>(k)];
      append(ids, d.tokens(d.about(user)));
      out.push_back({std::move(ids), 0.0, ""});
    }
  } else if (k == "chat") {
    const int64_t sessions = positive(p, k, "sessions", 16), turns = positive(p, k, "turns", 8);
    const int64_t sys = positive(p, k, "system", 256), user = positive(p, k, "user", 64);
    const int64_t reply = positive(p, k, "reply", 128);
    std::vector<std::vector<int32_t>> base;
    for (int64_t s = 0; s < sessions; ++s) base.push_back(d.tokens(sys));
    out = growing_sessions(d, "chat", std::move(base), turns, user, reply);
  } else if (k == "agent") {
    const int64_t loops = positive(p, k, "loops", 8), steps = positive(p, k, "steps", 16);
    const int64_t context = positive(p, k, "context", 2048), obs = positive(p, k, "obs", 64);
    std::vector<std::vector<int32_t>> base;
    for (int64_t s = 0; s < loops; ++s) base.push_back(d.tokens(context));
    out = growing_sessions(d, "agent", std::move(base), steps, obs, 0);
  } else if (k == "random") {
    const int64_t n = positive(p, k, "requests", 200), len = positive(p, k, "len", 1024);
    for (int64_t i = 0; i < n; ++i) out.push_back({d.tokens(d.about(len)), 0.0, ""});
  } else {
    std::string list;
    for (const auto& n : prefix_workload_kinds()) list += (list.empty() ? "" : ", ") + n;
    throw UsageError("--synth: unknown workload '" + k + "' (valid: " + list + ")");
  }
  p.finish();
  double t = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (i > 0) t += d.gap(rate);
    out[i].arrival = t;
  }
  return out;
}

}  // namespace kvsim
