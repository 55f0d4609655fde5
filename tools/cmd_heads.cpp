// kvsim heads --trace CAL.h5 [--q-len N] [--out FILE]: DuoAttention's on-the-fly head scores
// (sim/strategies/duoattention.cpp; kvpress's duo_attention_on_the_fly) from a calibration trace,
// for duoattention:scores=FILE. Per sequence, per (layer, KV head): the area under the cumulated
// attention of the sequence's mean pre-RoPE query and key (every token of the sequence, as kvpress
// averages whole texts), the group's mean; the table is the mean over the trace's sequences, one row
// per layer, one column per KV head. Written whole or not at all (NewFile; an existing --out is
// refused), or printed.
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "sim/base/error.h"
#include "sim/base/new_file.h"
#include "sim/strategies/strategy.h"
#include "tools/commands.h"
#include "traces/reader.h"

namespace kvsim::tools {

namespace {

struct HeadsArgs {
  std::string trace, out;
  int64_t q_len = 500;
};

int run_heads(const HeadsArgs& a) {
  if (a.q_len < 1) throw UsageError("--q-len " + std::to_string(a.q_len) + " must be >= 1");
  if (!a.out.empty() && std::filesystem::exists(a.out))
    throw UsageError("--out " + a.out + " already exists; remove it or choose another name");
  const auto duo = make_strategy("duoattention:q_len=" + std::to_string(a.q_len));
  traces::TraceReader r(a.trace);
  const traces::TraceHeader& h = r.header();
  const int64_t L = h.n_layers, Hkv = h.n_kv_heads, n_seq = static_cast<int64_t>(r.sequences().size());
  if (n_seq == 0) throw FormatError(a.trace + ": the trace has no sequences");
  std::vector<double> score(static_cast<size_t>(L * Hkv), 0.0);
  for (int64_t s = 0; s < n_seq; ++s) {
    const auto& sq = r.sequence(s);
    if (!r.has(s, traces::Kind::q_pre) || !r.has(s, traces::Kind::k_pre))
      throw UsageError(a.trace + ": sequence " + sq.name +
                       " has no pre-RoPE queries and keys (q_pre, k_pre: record it with kvsim record --pre)");
    for (int64_t l = 0; l < L; ++l) {
      const auto q_pre = r.read_layer(s, l, traces::Kind::q_pre), k_pre = r.read_layer(s, l, traces::Kind::k_pre);
      LayerView lv;
      lv.H = h.n_heads, lv.Hkv = Hkv, lv.T = sq.n_tokens, lv.D = h.head_dim;
      lv.q_pre = q_pre.data(), lv.k_pre = k_pre.data();
      lv.rope_theta = h.rope_theta, lv.rope_style = parse_rope_style(h.rope_style);
      const std::vector<double> p = duo->layer_profile(lv, sq.n_tokens);
      for (int64_t kv = 0; kv < Hkv; ++kv) score[l * Hkv + kv] += p[kv] / static_cast<double>(n_seq);
    }
  }
  std::ostringstream o;
  o.precision(17);
  for (int64_t l = 0; l < L; ++l)
    for (int64_t kv = 0; kv < Hkv; ++kv) o << score[l * Hkv + kv] << (kv + 1 < Hkv ? '\t' : '\n');
  const std::string text = o.str();
  if (a.out.empty()) {
    std::fputs(text.c_str(), stdout);
  } else {
    NewFile f(a.out);
    f.write(text.data(), text.size());
    f.commit();
    std::fprintf(stderr, "kvsim heads: %lld x %lld head scores from %lld sequences -> %s\n", (long long)L,
                 (long long)Hkv, (long long)n_seq, a.out.c_str());
  }
  return 0;
}

}  // namespace

void add_heads(CLI::App& app) {
  auto a = std::make_shared<HeadsArgs>();
  CLI::App* c = app.add_subcommand(
      "heads", "DuoAttention's on-the-fly head scores from a calibration trace (for duoattention:scores=FILE)");
  c->add_option("--trace", a->trace, "calibration trace (.h5) recorded with --pre (q_pre, k_pre)")->required();
  c->add_option("--q-len", a->q_len, "positions of the mean query and key (kvpress's q_len)")->capture_default_str();
  c->add_option("--out", a->out, "write the table here (one row per layer, one column per KV head); default: stdout");
  c->callback([a] { exit_status() = run_heads(*a); });
}

}  // namespace kvsim::tools
