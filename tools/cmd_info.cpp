// kvsim info TRACE [--json] [--check]: shape, model, sequences, dtype, size; validates the file.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "sim/base/error.h"
#include "tools/commands.h"
#include "tools/report_json.h"
#include "traces/reader.h"

namespace kvsim::tools {

namespace {

struct InfoArgs {
  std::string trace;
  bool json = false;
  bool check = false;
};

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

std::string value_text(float x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(x));
  return buf;
}

int run_info(const InfoArgs& a) {
  traces::TraceReader r(a.trace);
  const traces::TraceHeader& h = r.header();
  std::vector<traces::NonFinite> bad;
  if (a.check) bad = r.check_finite();

  int64_t total_tokens = 0;
  for (const auto& s : r.sequences()) total_tokens += s.n_tokens;

  if (a.json) {
    nlohmann::json j = trace_info_json(r);
    if (a.check) {
      j["check"] = nlohmann::json::array();
      for (const auto& b : bad)
        j["check"].push_back({{"dataset", b.dataset},
                              {"count", b.count},
                              {"head", b.head},
                              {"token", b.token},
                              {"dim", b.dim},
                              {"value", value_text(b.value)}});
    }
    std::printf("%s\n", json_text(j).c_str());
  } else {
    std::printf("trace        %s (%s)\n", r.path().c_str(), human_bytes(static_cast<double>(r.file_bytes())).c_str());
    std::printf("format       %s v%d, complete\n", traces::kFormatName, traces::kFormatVersion);
    std::printf("model        %s (architecture %s)%s\n", h.model.c_str(), h.architecture.c_str(),
                h.synthetic ? ", SYNTHETIC: not for fidelity claims" : "");
    std::printf("shape        L=%lld H=%lld Hkv=%lld G=%lld D=%lld, vocab %lld\n", (long long)h.n_layers,
                (long long)h.n_heads, (long long)h.n_kv_heads, (long long)(h.n_heads / h.n_kv_heads),
                (long long)h.head_dim, (long long)h.vocab_size);
    std::printf("rope         %s, theta %g\n", h.rope_style.c_str(), h.rope_theta);
    std::printf("dtype        %s\n", traces::dtype_name(h.stored_dtype));
    std::printf("recorded     %s on %s, %s\n", h.recorder.c_str(), h.device.c_str(), h.created.c_str());
    std::printf("sequences    %zu, %lld tokens in all\n", r.sequences().size(), (long long)total_tokens);
    std::printf("  %-12s %8s %8s  %-28s %s\n", "name", "T", "P", "tensors", "source");
    for (const auto& s : r.sequences()) {
      std::string kinds;
      for (auto k : s.kinds) kinds += std::string(kinds.empty() ? "" : ",") + traces::kind_name(k);
      std::printf("  %-12s %8lld %8lld  %-28s %s\n", s.name.c_str(), (long long)s.n_tokens, (long long)s.prefill_len,
                  kinds.c_str(), s.source.c_str());
    }
    if (a.check)
      std::printf("check        %s\n",
                  bad.empty() ? "all tensors finite, |x| <= 65504" : "NON-FINITE OR OUT-OF-RANGE VALUES FOUND");
  }
  if (!bad.empty()) {
    const auto& b = bad.front();
    std::string more = bad.size() > 1 ? " (and " + std::to_string(bad.size() - 1) + " more datasets)" : "";
    const auto ends = [&](const std::string& tail) {
      return b.dataset.size() >= tail.size() &&
             b.dataset.compare(b.dataset.size() - tail.size(), tail.size(), tail) == 0;
    };
    const bool vo = ends("/vo_norm"), kz = ends("/kvzip_score");
    throw NumericError(a.trace + ": " + b.dataset + ": " + std::to_string(b.count) +
                       (vo   ? " negative, non-finite or out-of-range values (vo_norm holds L1 norms, 0 <= x <= 65504)"
                        : kz ? " negative, non-finite or out-of-range values (kvzip_score holds attention "
                               "probabilities, 0 <= x <= 1)"
                             : " non-finite or out-of-range values (a trace holds finite |x| <= 65504)") +
                       ", first " + value_text(b.value) + " at [head " + std::to_string(b.head) + ", token " +
                       std::to_string(b.token) + (vo || kz ? std::string() : ", dim " + std::to_string(b.dim)) + "]" +
                       more);
  }
  return 0;
}

}  // namespace

void add_info(CLI::App& app) {
  auto a = std::make_shared<InfoArgs>();
  CLI::App* c = app.add_subcommand("info", "Show a trace's model, shape, dtype and sequences; validate the file");
  c->add_option("TRACE", a->trace, "trace file (.h5)")->required();
  c->add_flag("--json", a->json, "print JSON instead of a table");
  c->add_flag("--check", a->check,
              "scan every tensor, streaming one chunk at a time, for NaN, inf and |x| > 65504 (exit 2 if any)");
  c->callback([a] { exit_status() = run_info(*a); });
}

}  // namespace kvsim::tools
