// Streaming writer for trace format v1. Writes NAME.h5.partial, and only finish() sets
// `complete = 1`, syncs and renames it to NAME.h5, so a killed writer never leaves a file that
// reads as a complete trace. Tensors are written one block of heads x tokens at a time.
// The partial is claimed before its first byte is written: created with O_EXCL | O_NOFOLLOW and
// locked until the rename, so a second writer on the same path or a planted link is refused and
// changes nothing; a partial left by a killed writer (unlocked) is taken over.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "traces/schema.h"

namespace kvsim::traces {

struct WriterOptions {
  bool compress = false;  // gzip + shuffle
  int gzip_level = 4;
  bool overwrite = false;  // replace an existing NAME.h5 (off: refuse, traces are write-once)
};

struct SequenceSpec {
  std::string name;  // empty: zero-padded index
  int64_t n_tokens = 0;
  int64_t prefill_len = 0;
  int64_t context_len = -1;  // -1: not written (traces/FORMAT.md); else 1 <= context_len <= prefill_len
  // The tokens kvzip_score scores (written, and required, with Kind::kvzip_score): 1 <= kvzip_context < T.
  int64_t kvzip_context = -1;
  // A needle's tokens [needle_start, needle_end) inside the prompt (written when both >= 0): what
  // kvsim heads --method retrieval scores the heads' copying of.
  int64_t needle_start = -1, needle_end = -1;
  std::string source;
  std::vector<int32_t> tokens;  // [T]
  std::string text;             // optional
  std::vector<Kind> kinds = {Kind::q, Kind::k, Kind::v};
};

class TraceWriter {
 public:
  // UsageError when NAME.h5 exists (without overwrite), when another writer holds NAME.h5.partial,
  // or when NAME.h5.partial is a link or not a plain file.
  TraceWriter(std::string path, TraceHeader header, WriterOptions options = {});
  ~TraceWriter();  // without finish(): closes and removes the .partial file
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  // Creates the sequence's datasets; returns its name.
  std::string begin_sequence(const SequenceSpec& spec);
  // Writes a block of the current sequence: data is [n_heads, n_tok, D] ([n_heads, n_tok] for
  // vo_norm), row-major, float32.
  void write(Kind kind, int64_t layer, int64_t head0, int64_t n_heads, int64_t t0, int64_t n_tok, const float* data);
  // One head's whole sequence: data is [T, D] ([T] for vo_norm).
  void write_head(Kind kind, int64_t layer, int64_t head, const float* data);
  // Checks that every dataset of the sequence was written in full.
  void end_sequence();
  // Sets complete = 1, closes, fsyncs and renames NAME.h5.partial -> NAME.h5.
  void finish();

  const std::string& path() const { return path_; }
  std::string partial_path() const { return path_ + ".partial"; }
  const TraceHeader& header() const { return header_; }

 private:
  void create_file();  // the HDF5 file in the claimed partial, root attributes, /sequences
  void discard();      // closes and removes the claimed partial, then releases its lock
  struct Impl;
  std::string path_;
  TraceHeader header_;
  WriterOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvsim::traces
