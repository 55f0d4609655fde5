#include "tools/report_json.h"

#include <cmath>

#include "sim/metrics.h"
#include "traces/schema.h"

namespace kvsim::tools {

nlohmann::json json_number(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); }

namespace {

nlohmann::json summary_json(const MetricSummary& x) {
  return {{"mean", json_number(x.mean)},
          {"p5", json_number(x.p5)},
          {"p50", json_number(x.p50)},
          {"p95", json_number(x.p95)},
          {"worst", json_number(x.worst)}};
}

}  // namespace

nlohmann::json run_json(const ReplayResult& r, bool per_head) {
  nlohmann::json j;
  j["trace"] = r.trace;
  j["sequence"] = r.sequence;
  j["prefill"] = r.P;
  j["protocol"] = protocol_name(r.protocol);
  j["stride"] = r.stride;
  j["T"] = r.T;
  j["shape"] = {{"L", r.L}, {"H", r.H}, {"Hkv", r.Hkv}, {"D", r.D}};
  j["eps"] = r.eps;
  j["backend"] = backend_name(r.backend);
  j["bin_edges"] = r.bin_edges;
  j["timing"] = {{"read_s", r.read_seconds},
                 {"reference_s", r.ref_seconds},
                 {"replay_s", r.replay_seconds},
                 {"reference_from_cache", r.stats_from_cache}};
  j["results"] = nlohmann::json::array();
  for (const auto& c : r.configs) {
    nlohmann::json cj;
    cj["strategy"] = c.strategy;
    cj["spec"] = c.spec;
    cj["params"] = c.params;
    cj["warnings"] = c.warnings;
    nlohmann::json s, cv;
    for (int m = 0; m < kNumMetrics; ++m) {
      s[metric_name(m)] = summary_json(c.summary[m]);
      nlohmann::json a = nlohmann::json::array();
      for (double v : c.curve[m]) a.push_back(json_number(v));
      cv[metric_name(m)] = a;
    }
    cj["summary"] = s;
    cj["curves"] = cv;
    if (per_head) {
      cj["heads"] = nlohmann::json::array();
      for (const auto& h : c.heads) {
        nlohmann::json hj{{"layer", h.layer}, {"head", h.head}};
        for (int m = 0; m < kNumMetrics; ++m) {
          hj[metric_name(m)] = summary_json(h.summary[m]);
        }
        cj["heads"].push_back(hj);
      }
    }
    j["results"].push_back(cj);
  }
  return j;
}

nlohmann::json trace_info_json(const traces::TraceReader& r) {
  const traces::TraceHeader& h = r.header();
  int64_t total_tokens = 0;
  for (const auto& s : r.sequences()) total_tokens += s.n_tokens;
  nlohmann::json j;
  j["path"] = r.path();
  j["bytes"] = r.file_bytes();
  j["format"] = traces::kFormatName;
  j["format_version"] = traces::kFormatVersion;
  j["model"] = h.model;
  j["architecture"] = h.architecture;
  j["n_layers"] = h.n_layers;
  j["n_heads"] = h.n_heads;
  j["n_kv_heads"] = h.n_kv_heads;
  j["head_dim"] = h.head_dim;
  j["vocab_size"] = h.vocab_size;
  j["rope_theta"] = h.rope_theta;
  j["rope_style"] = h.rope_style;
  j["stored_dtype"] = traces::dtype_name(h.stored_dtype);
  j["recorder"] = h.recorder;
  j["device"] = h.device;
  j["synthetic"] = h.synthetic;
  j["created"] = h.created;
  j["complete"] = h.complete;
  j["total_tokens"] = total_tokens;
  j["sequences"] = nlohmann::json::array();
  for (const auto& s : r.sequences()) {
    nlohmann::json sj{{"name", s.name},
                      {"n_tokens", s.n_tokens},
                      {"prefill_len", s.prefill_len},
                      {"source", s.source},
                      {"has_text", s.has_text}};
    if (s.context_len >= 0) sj["context_len"] = s.context_len;
    sj["tensors"] = nlohmann::json::array();
    for (auto k : s.kinds) sj["tensors"].push_back(traces::kind_name(k));
    j["sequences"].push_back(sj);
  }
  return j;
}

}  // namespace kvsim::tools
