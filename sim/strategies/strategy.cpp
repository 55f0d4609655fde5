#include "sim/strategies/strategy.h"

#include <algorithm>
#include <functional>

#include "sim/base/error.h"
#include "sim/strategies/allocator.h"
#include "sim/strategies/quant_codecs.h"
#include "sim/strategies/registry.h"

namespace kvsim {

const Codec& identity_codec() {
  static const IdentityCodec c;
  return c;
}

const char* protocol_name(Protocol p) {
  switch (p) {
    case Protocol::prefill: return "prefill";
    case Protocol::sparse: return "sparse";
    case Protocol::evict: break;
  }
  return "evict";
}

Protocol parse_protocol(const std::string& s) {
  if (s == "evict") return Protocol::evict;
  if (s == "prefill") return Protocol::prefill;
  if (s == "sparse") return Protocol::sparse;
  throw UsageError("protocol '" + s +
                   "' is not one of evict (decode-time eviction), prefill (compress once after "
                   "the prompt, then grow), sparse (query-aware reads over a full cache)");
}

Gqa parse_gqa(const std::string& s) {
  if (s == "mean") return Gqa::mean;
  if (s == "max") return Gqa::max;
  if (s == "sum") return Gqa::sum;
  if (s == "none") return Gqa::none;
  throw UsageError("gqa=" + s + " is not one of mean, max, sum, none");
}

void combine_gqa(const float* w, int64_t G, int64_t n, Gqa how, float* out) {
  KVSIM_ASSERT(how != Gqa::none || G == 1);
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
  // clang-format off (a table, aligned by hand)
  static const std::vector<std::pair<std::string, Factory>> r = {
      {"full", make_full},
      {"window", make_window},
      {"streaming", make_streaming},
      {"h2o", make_h2o},
      {"tova", make_tova},
      {"scissorhands", make_scissorhands},
      {"snapkv", make_snapkv},
      {"pyramidkv", make_pyramidkv},
      {"knorm", make_knorm},
      {"random", make_random},
      {"entropy_merge", make_entropy_merge},
      {"cam", make_cam},
      {"cms_topk", make_cms_topk},
      {"kvmerger", make_kvmerger},
      {"cms_aggregate", make_cms_aggregate},
      {"keydiff", make_keydiff},
      {"lagkv", make_lagkv},
      {"expected_attention", make_expected_attention},
      {"simlayerkv", make_simlayerkv},
      {"cake", make_cake},
      {"duoattention", make_duoattention},
      {"headkv", make_headkv},
      {"rkv", make_rkv},
      {"kvzip", make_kvzip},
      {"defensivekv", make_defensivekv},
      {"oracle_topk", make_oracle_topk},
      {"quest", make_quest},
      {"sparq", make_sparq},
      {"magicpig", make_magicpig},
      {"pqcache", make_pqcache},
      {"rocketkv", make_rocketkv},
      {"shadowkv", make_shadowkv},
  };
  // clang-format on
  return r;
}
}  // namespace

std::vector<std::string> strategy_names() {
  std::vector<std::string> n;
  for (const auto& [name, f] : registry()) n.push_back(name);
  return n;
}

namespace {
[[noreturn]] void unknown_strategy(const std::string& name) {
  std::string codecs;
  for (const auto& n : codec_names()) codecs += (codecs.empty() ? "" : ", ") + n;
  throw UsageError("unknown strategy '" + name + "' (valid: " + strategy_names_help() + "; codecs: " + codecs + ")");
}
Factory find_factory(const std::string& name) {
  for (const auto& [n, factory] : registry())
    if (n == name) return factory;
  return nullptr;
}
}  // namespace

std::string strategy_names_help() {
  std::string names, wrappers;
  for (const auto& n : strategy_names()) names += (names.empty() ? "" : ", ") + n;
  for (const auto& n : allocator_names()) wrappers += (wrappers.empty() ? "" : ", ") + n + ".BASE";
  return names + "; wrappers: " + wrappers;
}

const std::vector<double>& model_plan(const Strategy& s, const InstanceContext& ctx, const LayerView& lv, int64_t P,
                                      std::vector<double>& own) {
  if (ctx.plan) return *ctx.plan;
  KVSIM_ASSERT(ctx.n_layers == 1);
  own = s.make_plan({s.layer_profile(lv, P)}, ctx.T, P);
  return own;
}

std::unique_ptr<Strategy> make_strategy(const StrategySpec& spec) {
  ParamReader p(spec);
  std::unique_ptr<Strategy> s;
  // WRAPPER.BASE: a budget allocator around a scorer, the parameters shared (allocator.h).
  if (const size_t dot = spec.name.find('.'); dot != std::string::npos) {
    const std::string wrapper = spec.name.substr(0, dot), base = spec.name.substr(dot + 1);
    Factory bf = find_factory(base);
    if (WrapperFactory wf = find_wrapper(wrapper)) {
      if (base.find('.') != std::string::npos)
        throw UsageError("strategy '" + spec.text + "': " + wrapper + " wraps a scorer, not another wrapper ('" + base +
                         "')");
      if (!bf) unknown_strategy(base);
      s = wf(p, bf(p));
    } else {
      std::string wrappers;
      for (const auto& n : allocator_names()) wrappers += (wrappers.empty() ? "" : ", ") + n;
      throw UsageError("strategy '" + spec.text + "': '" + wrapper +
                       "' is not a wrapper (WRAPPER.BASE with WRAPPER one of " + wrappers + ")");
    }
  } else {
    Factory f = find_factory(spec.name);
    if (!f) unknown_strategy(spec.name);
    s = f(p);
  }
  p.finish();
  return s;
}

namespace {

// A strategy whose slots are stored through a codec: everything but the codec comes from `base`.
class Composed final : public Strategy {
 public:
  Composed(std::unique_ptr<Strategy> base, std::unique_ptr<Codec> codec, const std::string& text,
           const std::map<std::string, std::string>& codec_params)
      : base_(std::move(base)), codec_(std::move(codec)) {
    if (!base_->takes_codec())
      throw UsageError("'" + text + "': " + base_->name() +
                       " holds its own keys (low-rank factors), so a storage codec on its cache is not modelled");
    name_ = base_->name() + "+" + codec_->name();
    spec_text_ = text;
    params_ = base_->params();
    for (const auto& [k, v] : codec_params) params_[codec_->name() + "." + k] = v;
  }
  bool layer_coupled() const override { return base_->layer_coupled(); }
  bool is_selector() const override { return base_->is_selector(); }
  bool needs_prompt_colsums() const override { return base_->needs_prompt_colsums(); }
  bool needs_entropy() const override { return base_->needs_entropy(); }
  bool needs_pre_rope() const override { return base_->needs_pre_rope(); }
  bool needs_q_pre() const override { return base_->needs_q_pre(); }
  bool needs_vo_norm() const override { return base_->needs_vo_norm(); }
  bool needs_kvzip_score() const override { return base_->needs_kvzip_score(); }
  bool needs_queries() const override { return base_->needs_queries(); }
  bool needs_model_plan() const override { return base_->needs_model_plan(); }
  bool runs_under(Protocol p) const override { return base_->runs_under(p); }
  std::vector<double> layer_profile(const LayerView& lv, int64_t P) const override {
    return base_->layer_profile(lv, P);
  }
  std::vector<double> make_plan(const std::vector<std::vector<double>>& profiles, int64_t T, int64_t P) const override {
    return base_->make_plan(profiles, T, P);
  }
  const Codec& codec() const override { return *codec_; }
  std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const override {
    return base_->make_state(ctx);
  }

 private:
  std::unique_ptr<Strategy> base_;
  std::unique_ptr<Codec> codec_;
};

}  // namespace

std::unique_ptr<Strategy> make_strategy(const std::string& spec_text) {
  // "strategy[:params]+codec[:params]", "codec[:params]" (= full + codec), or "strategy[:params]".
  const size_t plus = spec_text.find('+');
  std::string base_text = spec_text, codec_text;
  if (plus != std::string::npos) {
    base_text = spec_text.substr(0, plus);
    codec_text = spec_text.substr(plus + 1);
    if (codec_text.find_first_not_of(" \t") == std::string::npos)
      throw UsageError("'" + spec_text + "': nothing after '+' (expected strategy+codec, e.g. h2o:budget=64+kivi)");
    if (codec_text.find('+') != std::string::npos)
      throw UsageError("'" + spec_text + "': a strategy composes with one codec at most (strategy+codec)");
  }
  StrategySpec base = parse_spec(base_text);
  if (is_codec_name(base.name)) {
    if (!codec_text.empty())
      throw UsageError("'" + spec_text + "': two codecs cannot be composed ('" + base.name + "' is a codec)");
    codec_text = base_text;
    base = parse_spec("full");
  }
  if (codec_text.empty()) return make_strategy(base);
  StrategySpec cs = parse_spec(codec_text);
  if (!is_codec_name(cs.name)) {
    std::string list;
    for (const auto& n : codec_names()) list += (list.empty() ? "" : ", ") + n;
    throw UsageError("'" + spec_text + "': '" + cs.name + "' after '+' is not a codec (valid: " + list + ")");
  }
  std::map<std::string, std::string> codec_params;
  auto codec = make_codec(cs, &codec_params);
  return std::make_unique<Composed>(make_strategy(base), std::move(codec), spec_text, codec_params);
}

}  // namespace kvsim
