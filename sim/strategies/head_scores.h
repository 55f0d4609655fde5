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

struct HeadScores {
  int64_t rows = 0, cols = 0;  // layers, heads
  std::vector<double> value;   // [rows, cols]
  double at(int64_t l, int64_t h) const { return value[static_cast<size_t>(l * cols + h)]; }
};

// `what` names the reader in errors ("strategy 'headkv:...'").
HeadScores read_head_scores(const std::string& path, const std::string& what);

}  // namespace kvsim
