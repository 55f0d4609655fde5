// Sidecar cache of reference statistics (design.md §3), keyed by the trace's content hash, the
// sequence and the backend: `<dir>/<trace name>.<hash>.s<seq>.<backend>.kvstats`, in a cache folder
// (default_cache_dir(); never next to the trace, so a repository's traces stay clean). Format
// "KVSTATS" version 3: a fixed header (magic, version, backend, kernel revision, hash, seq, L, H, T, D, K), one
// block per layer (o f32, lse f64, entropy f32, top_pos i32, top_w f32, as in ExactStats), then a 64-bit FNV-1a
// checksum of the blocks. Written to `.partial.<pid>` layer by layer and renamed only when every layer is in, so a
// reader never sees a torn file. Opening validates the whole body (size, checksum, every top-k position within its
// step, finite values); an invalid sidecar is recomputed and replaced, and invalid_reason() says why.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "sim/exact_stats.h"
#include "sim/kernels/backend.h"

namespace kvsim {

// $KVSIM_CACHE_DIR, else $XDG_CACHE_HOME/kvsim, else $HOME/.cache/kvsim ("" if none is set).
std::string default_cache_dir();

// 64-bit FNV-1a over the file's bytes (8-byte words); throws IoError if unreadable. Remembered per
// process for a file whose device, inode, size and modification time are unchanged (traces are
// written once and renamed into place, so a new trace at the same path is a new inode): a sweep
// calls this once per batch, and hashing a large trace costs seconds.
uint64_t file_content_hash(const std::string& path);

class StatsCache {
 public:
  // dir: "" = default_cache_dir(), "off" = disabled, else a folder (created if missing).
  StatsCache(const std::string& trace_path, int64_t seq, Backend b, int64_t L, int64_t H, int64_t T, int64_t D,
             const std::string& dir);
  ~StatsCache();
  StatsCache(const StatsCache&) = delete;
  StatsCache& operator=(const StatsCache&) = delete;

  bool enabled() const { return !path_.empty(); }
  bool hit() const { return hit_; }
  // Why the sidecar found on disk was not used though it was this trace's ("" when none was, or it was valid).
  const std::string& invalid_reason() const { return invalid_; }
  const std::string& path() const { return path_; }
  bool load(int64_t layer, ExactStats& rs);         // false unless the sidecar was found valid
  void store(int64_t layer, const ExactStats& rs);  // layers in order 0..L-1; no-op on a hit
  void finish();                                    // renames the partial file once complete

 private:
  int64_t layer_bytes() const;
  std::string validate_body();  // reads every layer after the header; "" when valid
  std::string path_, partial_, invalid_;
  uint64_t sum_ = 0xcbf29ce484222325ull;  // checksum of the layers stored so far
  int64_t seq_, L_, H_, T_, D_, K_ = kExactTopK;
  Backend backend_;
  uint64_t hash_ = 0;
  bool hit_ = false;
  int64_t stored_ = 0;
  std::FILE* in_ = nullptr;
  std::FILE* out_ = nullptr;
};

}  // namespace kvsim
