// Per-head scores read from a file, for the strategies that take a user's head scores (duoattention's
// gates, headkv's retrieval scores; sim/strategies/STRATEGIES.md). Two formats:
//   a table: one row per layer, one number per head, separated by spaces or tabs (blank lines skipped):
//     DuoAttention's full_attention_heads.tsv;
//   a JSON object {"LAYER-HEAD": [scores, ...], ...} on one line (HeadKV's head_path files, the Retrieval
//     Heads output): each head's score is the mean of its list; layers and heads must cover 0..L-1 and
//     0..n-1 exactly.
// Bad files are a UsageError naming the path, the line or key, and the values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvsim {

struct LayerView;

struct HeadScores {
  int64_t rows = 0, cols = 0;  // layers, heads
  std::vector<double> value;   // [rows, cols]
  double at(int64_t l, int64_t h) const { return value[static_cast<size_t>(l * cols + h)]; }
};

// `what` names the reader in errors ("strategy 'headkv:...'").
HeadScores read_head_scores(const std::string& path, const std::string& what);

// HeadKV's capacities (sim/strategies/headkv.cpp) per (layer, KV head), plan[l * Hkv + kv], from the head
// scores and the layers' profiles {H, Hkv}: round(ŝ·⌊C/beta⌋·L·H + C − ⌊C/beta⌋) per query head (half to
// even), the rounded mean over each KV head's group. UsageError (naming `spec` and `path`) when the scores'
// shape is not L x H or they sum to 0.
std::vector<double> headkv_capacities(const HeadScores& scores, const std::string& path, const std::string& spec,
                                      const std::vector<std::vector<double>>& profiles, double C, double beta);

// Retrieval Heads (Wu et al., "Retrieval Head Mechanistically Explains Long-Context Factuality", arXiv
// 2404.15574; reference code nightdessert/Retrieval_Head retrieval_head_detection.py, retrieval_calculate):
// one sequence's retrieval score of every query head of one layer. The decode steps are the queries at
// positions P - 1 .. (the one that predicts token P first), at most `steps` of them, ending after the first
// step whose predicted token tokens[t + 1] is in `stop`; at step t a head hits when its top-1 attention
// position j (the largest logit q_t·k_j over j <= t; ties: the lower j) lies in the needle [ns, ne) and
// holds the predicted token (tokens[j] == tokens[t + 1]); each hit adds 1 / (ne - ns). Returns the scores
// [H] and sets *generated to the predicted tokens of the counted steps.
std::vector<double> retrieval_scores(const LayerView& lv, const std::vector<int32_t>& tokens, int64_t P, int64_t ns,
                                     int64_t ne, int64_t steps, const std::vector<int32_t>& stop,
                                     std::vector<int32_t>* generated = nullptr);
// The reference's success test, over token ids: ROUGE-1 recall of the needle's tokens in `generated`
// (each needle token counted at most as often as it is generated, over the needle's length).
double needle_recall(const std::vector<int32_t>& needle, const std::vector<int32_t>& generated);

}  // namespace kvsim
