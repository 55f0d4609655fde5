// Reader for trace format v1. Opening validates the root attributes, every sequence's attributes
// and every dataset's shape and type against them, before any tensor is read; tensors are then
// streamed one head (or one layer) at a time and converted to float32.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <xtensor/xtensor.hpp>

#include "traces/schema.h"

namespace kvsim::traces {

// One finding of check_finite(): a value that is NaN, inf or beyond |x| <= kMaxAbsValue.
struct NonFinite {
  std::string dataset;  // /sequences/0000/layers/3/k
  int64_t head = 0, token = 0, dim = 0;
  float value = 0;
  int64_t count = 0;  // non-finite values in this dataset
};

class TraceReader {
 public:
  explicit TraceReader(const std::string& path);
  ~TraceReader();
  TraceReader(TraceReader&&) noexcept;
  TraceReader& operator=(TraceReader&&) noexcept;

  const std::string& path() const { return path_; }
  const TraceHeader& header() const { return header_; }
  const std::vector<SequenceInfo>& sequences() const { return sequences_; }
  const SequenceInfo& sequence(int64_t index) const;
  int64_t find_sequence(const std::string& name) const;  // throws UsageError if absent
  bool has(int64_t seq, Kind kind) const;
  uint64_t file_bytes() const { return file_bytes_; }

  std::vector<int32_t> tokens(int64_t seq) const;
  std::string text(int64_t seq) const;  // "" when absent
  // [T, D] for one head ([T, 1] for vo_norm).
  xt::xtensor<float, 2> read_head(int64_t seq, int64_t layer, Kind kind, int64_t head) const;
  // [heads, T, D] for one layer ([H, T, 1] for vo_norm).
  xt::xtensor<float, 3> read_layer(int64_t seq, int64_t layer, Kind kind) const;
  // The layer's vo_norm [H, T] (present when has(seq, Kind::vo_norm)): finite, 0 <= x <= kMaxAbsValue.
  xt::xtensor<float, 2> read_vo_norm(int64_t seq, int64_t layer) const;
  // The layer's kvzip_score [Hkv, T] (present when has(seq, Kind::kvzip_score)): 0 <= x <= 1, and 0 from
  // the sequence's kvzip_context on (traces/FORMAT.md).
  xt::xtensor<float, 2> read_kvzip_score(int64_t seq, int64_t layer) const;
  // Reads into a caller buffer: heads [head0, head0+n_heads) x tokens [t0, t0+n_tok) x D. Every read
  // refuses (NumericError naming the dataset, head, token and dim) a value that is NaN, inf or beyond
  // |x| <= kMaxAbsValue (traces/FORMAT.md "Values"), and for vo_norm ([n_heads, n_tok]) a negative one.
  void read_block(int64_t seq, int64_t layer, Kind kind, int64_t head0, int64_t n_heads, int64_t t0, int64_t n_tok,
                  float* out) const;

  // Scans every tensor for NaN, inf and |x| > kMaxAbsValue in blocks of one head by one chunk's
  // tokens (about 4 MiB at a time, independent of T); returns one finding per bad dataset.
  std::vector<NonFinite> check_finite() const;

 private:
  // read_block without the value check (check_finite counts instead of throwing).
  void read_raw(int64_t seq, int64_t layer, Kind kind, int64_t head0, int64_t n_heads, int64_t t0, int64_t n_tok,
                float* out) const;
  int64_t block_tokens(const std::string& dataset) const;  // tokens per chunk, or kChunkTokens
  struct Impl;
  std::string path_;
  TraceHeader header_;
  std::vector<SequenceInfo> sequences_;
  uint64_t file_bytes_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvsim::traces
