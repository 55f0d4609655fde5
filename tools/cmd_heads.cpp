// kvsim heads --trace CAL.h5 [--method duo|retrieval] [--out FILE]: head scores from a calibration
// trace. Written whole or not at all (NewFile; an existing --out is refused), or printed.
//   duo (default): DuoAttention's on-the-fly scores (sim/strategies/duoattention.cpp; kvpress's
//     duo_attention_on_the_fly), for duoattention:scores=FILE. Per sequence, per (layer, KV head): the
//     area under the cumulated attention of the sequence's mean pre-RoPE query and key (every token of
//     the sequence, as kvpress averages whole texts), the group's mean; the table is the mean over the
//     trace's sequences, one row per layer, one column per KV head.
//   retrieval: Retrieval Heads' scores (sim/strategies/head_scores.h, retrieval_scores), for
//     headkv:scores=FILE: on needle sequences (a needle_start/needle_end span, from kvsim record's JSON
//     "needle", or --needle START:END), per query head, the needle tokens it copies by its top-1 attention
//     over the first --steps decode steps; a sequence counts when the generated tokens recall at least
//     --min-recall of the needle's (the reference keeps runs whose ROUGE-1 recall exceeds 50). Written as
//     the reference's JSON {"LAYER-HEAD": [one score per counted sequence]}.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "sim/base/error.h"
#include "sim/base/new_file.h"
#include "sim/strategies/head_scores.h"
#include "sim/strategies/strategy.h"
#include "tools/commands.h"
#include "traces/reader.h"

namespace kvsim::tools {

namespace {

struct HeadsArgs {
  std::string trace, out, method = "duo", needle;
  int64_t q_len = 500, steps = 50;
  double min_recall = 0.5;
  std::vector<int32_t> stop;
};

void write_out(const HeadsArgs& a, const std::string& text, const std::string& what) {
  if (a.out.empty()) {
    std::fputs(text.c_str(), stdout);
    return;
  }
  NewFile f(a.out);
  f.write(text.data(), text.size());
  f.commit();
  std::fprintf(stderr, "kvsim heads: %s -> %s\n", what.c_str(), a.out.c_str());
}

int run_retrieval(const HeadsArgs& a, const traces::TraceReader& r) {
  if (a.steps < 1) throw UsageError("--steps " + std::to_string(a.steps) + " must be >= 1");
  if (!(a.min_recall >= 0 && a.min_recall <= 1))
    throw UsageError("--min-recall " + std::to_string(a.min_recall) + " must be in [0, 1]");
  int64_t ns0 = -1, ne0 = -1;
  if (!a.needle.empty()) {
    char* end = nullptr;
    ns0 = std::strtoll(a.needle.c_str(), &end, 10);
    if (end == a.needle.c_str() || *end != ':') ns0 = -2;
    const char* e2 = end + (*end == ':' ? 1 : 0);
    ne0 = std::strtoll(e2, &end, 10);
    if (ns0 < 0 || end == e2 || *end != '\0' || ne0 <= ns0)
      throw UsageError("--needle '" + a.needle + "': give START:END, token positions with 0 <= START < END");
  }
  const traces::TraceHeader& h = r.header();
  const int64_t L = h.n_layers, H = h.n_heads;
  std::vector<std::vector<double>> per(static_cast<size_t>(L * H));  // one score per counted sequence
  int64_t counted = 0, with_needle = 0;
  std::string missed;
  for (int64_t s = 0; s < static_cast<int64_t>(r.sequences().size()); ++s) {
    const auto& sq = r.sequence(s);
    const int64_t ns = ns0 >= 0 ? ns0 : sq.needle_start, ne = ns0 >= 0 ? ne0 : sq.needle_end;
    if (ns < 0) continue;  // not a needle sequence
    if (ne > sq.prefill_len)
      throw UsageError(a.trace + ": sequence " + sq.name + ": the needle [" + std::to_string(ns) + ", " +
                       std::to_string(ne) + ") is not inside its prompt of " + std::to_string(sq.prefill_len) +
                       " tokens");
    if (sq.prefill_len >= sq.n_tokens)
      throw UsageError(a.trace + ": sequence " + sq.name + " has no generated tokens to score");
    ++with_needle;
    const std::vector<int32_t> tokens = r.tokens(s);
    std::vector<std::vector<double>> layer(static_cast<size_t>(L));
    std::vector<int32_t> generated;
    for (int64_t l = 0; l < L; ++l) {
      const auto q = r.read_layer(s, l, traces::Kind::q), k = r.read_layer(s, l, traces::Kind::k);
      LayerView lv;
      lv.H = H, lv.Hkv = h.n_kv_heads, lv.T = sq.n_tokens, lv.D = h.head_dim;
      lv.q = q.data(), lv.k = k.data();
      layer[l] = retrieval_scores(lv, tokens, sq.prefill_len, ns, ne, a.steps, a.stop, &generated);
    }
    const std::vector<int32_t> needle(tokens.begin() + ns, tokens.begin() + ne);
    const double recall = needle_recall(needle, generated);
    if (recall < a.min_recall) {  // the model did not retrieve the needle: not counted, as the reference
      missed += (missed.empty() ? "" : ", ") + sq.name + " (" + std::to_string(recall).substr(0, 4) + ")";
      continue;
    }
    ++counted;
    for (int64_t l = 0; l < L; ++l)
      for (int64_t q = 0; q < H; ++q) per[l * H + q].push_back(layer[l][q]);
  }
  if (with_needle == 0)
    throw UsageError(a.trace +
                     ": no sequence has a needle (record with a JSON line's \"needle\", or give --needle "
                     "START:END)");
  if (counted == 0)
    throw UsageError(a.trace + ": no sequence's continuation recalls --min-recall " + std::to_string(a.min_recall) +
                     " of its needle (recall: " + missed + ")");
  std::ostringstream o;
  o.precision(17);
  o << "{";
  for (int64_t l = 0; l < L; ++l)
    for (int64_t q = 0; q < H; ++q) {
      o << (l + q == 0 ? "" : ", ") << "\"" << l << "-" << q << "\": [";
      for (size_t i = 0; i < per[l * H + q].size(); ++i) o << (i ? ", " : "") << per[l * H + q][i];
      o << "]";
    }
  o << "}\n";
  if (!missed.empty())
    std::fprintf(stderr, "kvsim heads: not counted (needle recall below --min-recall): %s\n", missed.c_str());
  write_out(a, o.str(),
            std::to_string(L) + " x " + std::to_string(H) + " retrieval scores from " + std::to_string(counted) +
                " of " + std::to_string(with_needle) + " needle sequences");
  return 0;
}

int run_heads(const HeadsArgs& a) {
  if (a.q_len < 1) throw UsageError("--q-len " + std::to_string(a.q_len) + " must be >= 1");
  if (!a.out.empty() && std::filesystem::exists(a.out))
    throw UsageError("--out " + a.out + " already exists; remove it or choose another name");
  if (a.method == "retrieval") {
    traces::TraceReader r(a.trace);
    if (r.sequences().empty()) throw FormatError(a.trace + ": the trace has no sequences");
    return run_retrieval(a, r);
  }
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
  write_out(
      a, o.str(),
      std::to_string(L) + " x " + std::to_string(Hkv) + " head scores from " + std::to_string(n_seq) + " sequences");
  return 0;
}

}  // namespace

void add_heads(CLI::App& app) {
  auto a = std::make_shared<HeadsArgs>();
  CLI::App* c = app.add_subcommand(
      "heads",
      "Head scores from a calibration trace: DuoAttention's on the fly (for duoattention:scores=FILE) or Retrieval "
      "Heads' on needle sequences (for headkv:scores=FILE)");
  c->add_option("--trace", a->trace,
                "calibration trace (.h5): recorded with --pre (duo), or with needles (retrieval: a JSON line's "
                "\"needle\" in kvsim record --prompts)")
      ->required();
  c->add_option("--method", a->method, "duo (DuoAttention on the fly) or retrieval (Retrieval Heads)")
      ->check(CLI::IsMember({"duo", "retrieval"}))
      ->capture_default_str();
  c->add_option("--q-len", a->q_len, "duo: positions of the mean query and key (kvpress's q_len)")
      ->capture_default_str();
  c->add_option("--steps", a->steps, "retrieval: decode steps scored (the reference's decode_len)")
      ->capture_default_str();
  c->add_option("--min-recall", a->min_recall,
                "retrieval: count a sequence when its continuation recalls this share of the needle's tokens")
      ->capture_default_str();
  c->add_option("--stop-id", a->stop, "retrieval: stop after a step predicting this token id (the reference: newline)")
      ->delimiter(',');
  c->add_option("--needle", a->needle,
                "retrieval: the needle's positions START:END in every sequence (default: each sequence's needle_start, "
                "needle_end)");
  c->add_option("--out", a->out,
                "write the scores here (duo: one row per layer, one column per KV head; retrieval: JSON "
                "{\"LAYER-HEAD\": [scores]}); default: stdout");
  c->callback([a] { exit_status() = run_heads(*a); });
}

}  // namespace kvsim::tools
