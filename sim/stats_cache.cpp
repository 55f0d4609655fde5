#include "sim/stats_cache.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <sys/stat.h>
#include <tuple>
#include <unistd.h>
#include <vector>

#include "sim/base/error.h"
#include "sim/base/new_file.h"
#include "sim/base/regular_file.h"

namespace kvsim {

namespace {
constexpr char kMagic[8] = {'K', 'V', 'S', 'T', 'A', 'T', 'S', '\0'};
constexpr uint32_t kVersion = 3;  // 2: lse in float64; 3: a checksum after the last layer

struct Header {
  char magic[8];
  uint32_t version, backend;
  uint32_t revision, pad;  // exact_stats_revision(backend): results of older kernels are recomputed
  uint64_t hash;
  int64_t seq, L, H, T, D, K;
};

bool read_all(std::FILE* f, void* p, size_t n) { return std::fread(p, 1, n, f) == n; }
bool write_all(std::FILE* f, const void* p, size_t n) { return std::fwrite(p, 1, n, f) == n; }

// The body checksum: FNV-1a over 4-byte words (every array's size is a multiple of 4 bytes).
constexpr uint64_t kChecksumSeed = 0xcbf29ce484222325ull;
uint64_t checksum_update(uint64_t h, const void* p, size_t n) {
  const unsigned char* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i + 4 <= n; i += 4) {
    uint32_t w;
    std::memcpy(&w, b + i, 4);
    h = (h ^ w) * 0x100000001b3ull;
  }
  return h;
}

uint64_t checksum_layer(uint64_t h, const ExactStats& rs) {
  h = checksum_update(h, rs.o.data(), 4 * rs.o.size());
  h = checksum_update(h, rs.lse.data(), 8 * rs.lse.size());
  h = checksum_update(h, rs.entropy.data(), 4 * rs.entropy.size());
  h = checksum_update(h, rs.top_pos.data(), 4 * rs.top_pos.size());
  return checksum_update(h, rs.top_w.data(), 4 * rs.top_w.size());
}

bool read_layer_body(std::FILE* f, ExactStats& rs) {
  return read_all(f, rs.o.data(), 4 * rs.o.size()) && read_all(f, rs.lse.data(), 8 * rs.lse.size()) &&
         read_all(f, rs.entropy.data(), 4 * rs.entropy.size()) &&
         read_all(f, rs.top_pos.data(), 4 * rs.top_pos.size()) && read_all(f, rs.top_w.data(), 4 * rs.top_w.size());
}

// "" when every value of the layer is one the reference kernels can produce, else what is wrong.
std::string check_layer_values(const ExactStats& rs, int64_t layer) {
  const int64_t H = rs.H, T = rs.T, D = rs.D, K = rs.K;
  auto at = [&](int64_t h, int64_t t) {
    return " at layer " + std::to_string(layer) + ", head " + std::to_string(h) + ", step " + std::to_string(t);
  };
  for (int64_t h = 0; h < H; ++h)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row = h * T + t;
      if (!std::isfinite(rs.lse[row])) return "log-sum-exp " + std::to_string(rs.lse[row]) + at(h, t);
      if (!(rs.entropy[row] >= 0 && std::isfinite(rs.entropy[row])))
        return "entropy " + std::to_string(rs.entropy[row]) + at(h, t);
      for (int64_t x = 0; x < D; ++x)
        if (!std::isfinite(rs.o[row * D + x])) return "output " + std::to_string(rs.o[row * D + x]) + at(h, t);
      for (int64_t j = 0; j < K; ++j) {
        const int32_t p = rs.top_pos[row * K + j];
        const float w = rs.top_w[row * K + j];
        if (p < -1 || p > t)
          return "top-k position " + std::to_string(p) + at(h, t) + " outside [0, " + std::to_string(t) + "]";
        if (!(w >= 0.0f && w <= 1.0f + 1e-5f)) return "top-k weight " + std::to_string(w) + at(h, t);
      }
    }
  return "";
}
}  // namespace

namespace {

uint64_t hash_file_bytes(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw IoError(path + ": cannot open for hashing: " + std::strerror(errno));
  uint64_t h = 0xcbf29ce484222325ull;
  std::vector<unsigned char> buf(1 << 20);
  size_t n;
  uint64_t total = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, buf.data() + i, 8);
      h = (h ^ w) * 0x100000001b3ull;
      h ^= h >> 29;
    }
    for (; i < n; ++i) h = (h ^ buf[i]) * 0x100000001b3ull;
    total += n;
  }
  std::fclose(f);
  return h ^ total;
}

}  // namespace

namespace {
// Sidecars this process validated, by identity (a sweep opens the same sidecar once per batch and
// validating reads all of it; a rewritten or replaced file has a new identity).
using FileId = std::tuple<dev_t, ino_t, off_t, time_t, long>;
std::mutex valid_mu;
std::set<std::pair<std::string, FileId>> valid_files;

bool file_id(const std::string& path, FileId& id) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return false;
  id = FileId{st.st_dev, st.st_ino, st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec};
  return true;
}

bool known_valid(const std::string& path) {
  FileId id;
  std::lock_guard<std::mutex> lock(valid_mu);
  return file_id(path, id) && valid_files.count({path, id}) > 0;
}

void remember_valid(const std::string& path) {
  FileId id;
  std::lock_guard<std::mutex> lock(valid_mu);
  if (file_id(path, id)) valid_files.insert({path, id});
}
}  // namespace

uint64_t file_content_hash(const std::string& path) {
  struct Known {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    uint64_t hash;
  };
  static std::mutex mu;
  static std::map<std::string, Known> known;
  struct stat st {};
  const bool have_stat = ::stat(path.c_str(), &st) == 0;
  if (have_stat) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = known.find(path);
    if (it != known.end() && it->second.dev == st.st_dev && it->second.ino == st.st_ino &&
        it->second.size == st.st_size && it->second.mtime.tv_sec == st.st_mtim.tv_sec &&
        it->second.mtime.tv_nsec == st.st_mtim.tv_nsec)
      return it->second.hash;
  }
  const uint64_t h = hash_file_bytes(path);
  if (have_stat) {
    std::lock_guard<std::mutex> lock(mu);
    known[path] = Known{st.st_dev, st.st_ino, st.st_size, st.st_mtim, h};
  }
  return h;
}

std::string default_cache_dir() {
  namespace fs = std::filesystem;
  if (const char* d = std::getenv("KVSIM_CACHE_DIR"); d && *d) return d;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return (fs::path(x) / "kvsim").string();
  if (const char* h = std::getenv("HOME"); h && *h) return (fs::path(h) / ".cache" / "kvsim").string();
  return "";
}

StatsCache::StatsCache(const std::string& trace_path, int64_t seq, Backend b, int64_t L, int64_t H, int64_t T,
                       int64_t D, const std::string& dir)
    : seq_(seq), L_(L), H_(H), T_(T), D_(D), backend_(b) {
  if (dir == "off") return;
  namespace fs = std::filesystem;
  hash_ = file_content_hash(trace_path);
  const fs::path folder = dir.empty() ? fs::path(default_cache_dir()) : fs::path(dir);
  if (folder.empty()) return;  // no cache folder known: run without the cache
  std::error_code ec;
  fs::create_directories(folder, ec);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(hash_));
  path_ = (folder / (fs::path(trace_path).filename().string() + "." + hex + ".s" + std::to_string(seq) + "." +
                     backend_name(b) + ".kvstats"))
              .string();
  require_regular_file(path_, "sidecar");
  in_ = std::fopen(path_.c_str(), "rb");
  if (in_) {
    Header h{};
    hit_ = read_all(in_, &h, sizeof h) && std::memcmp(h.magic, kMagic, 8) == 0 && h.version == kVersion &&
           h.backend == static_cast<uint32_t>(b) && h.revision == exact_stats_revision(b) && h.hash == hash_ &&
           h.seq == seq && h.L == L && h.H == H && h.T == T && h.D == D && h.K == K_;
    std::error_code ec;
    const int64_t want = static_cast<int64_t>(sizeof h) + L * layer_bytes() + 8;
    const int64_t size = static_cast<int64_t>(fs::file_size(path_, ec));
    if (hit_ && size != want) {
      invalid_ = "its size is " + std::to_string(size) + " bytes, expected " + std::to_string(want);
      hit_ = false;
    }
    if (hit_ && !known_valid(path_)) {
      invalid_ = validate_body();
      if (invalid_.empty()) remember_valid(path_);
    }
    if (!invalid_.empty()) hit_ = false;
    if (!hit_) std::fclose(in_), in_ = nullptr;  // stale, foreign or damaged: recompute and replace it
  }
  if (!hit_) {
    partial_ = path_ + ".partial." + std::to_string(::getpid());
    out_ = create_new_file(partial_);  // never through a link planted at the name
    Header h{};
    std::memcpy(h.magic, kMagic, 8);
    h.version = kVersion, h.backend = static_cast<uint32_t>(b), h.hash = hash_;
    h.revision = exact_stats_revision(b);
    h.seq = seq, h.L = L, h.H = H, h.T = T, h.D = D, h.K = K_;
    if (out_ && !write_all(out_, &h, sizeof h)) std::fclose(out_), out_ = nullptr;
    if (!out_) {  // read-only folder: run without the cache
      std::remove(partial_.c_str());
      path_.clear();
    }
  }
}

StatsCache::~StatsCache() {
  if (in_) std::fclose(in_);
  if (out_) {
    std::fclose(out_);
    std::remove(partial_.c_str());
  }
}

int64_t StatsCache::layer_bytes() const { return 4 * (H_ * T_ * D_ + H_ * T_ + 2 * H_ * T_ * K_) + 8 * H_ * T_; }

std::string StatsCache::validate_body() {
  ExactStats rs;
  rs.resize(H_, T_, D_, K_);
  uint64_t sum = kChecksumSeed;
  for (int64_t l = 0; l < L_; ++l) {
    if (!read_layer_body(in_, rs)) return "truncated in layer " + std::to_string(l);
    sum = checksum_layer(sum, rs);
    if (std::string bad = check_layer_values(rs, l); !bad.empty()) return bad;
  }
  uint64_t stored = 0;
  if (!read_all(in_, &stored, sizeof stored)) return "no checksum";
  if (stored != sum) return "checksum mismatch";
  return "";
}

bool StatsCache::load(int64_t layer, ExactStats& rs) {
  if (!hit_) return false;
  rs.resize(H_, T_, D_, K_);
  if (std::fseek(in_, static_cast<long>(sizeof(Header) + layer * layer_bytes()), SEEK_SET) != 0)
    throw IoError(path_ + ": seek failed");
  if (!read_layer_body(in_, rs)) throw IoError(path_ + ": truncated reading layer " + std::to_string(layer));
  // Validated when opened; a file changed since then is not trusted either.
  if (std::string bad = check_layer_values(rs, layer); !bad.empty())
    throw FormatError(path_ + ": sidecar changed while in use: " + bad + " (delete it and rerun)");
  return true;
}

void StatsCache::store(int64_t layer, const ExactStats& rs) {
  if (!out_) return;
  KVSIM_ASSERT(layer == stored_);
  bool ok = write_all(out_, rs.o.data(), 4 * rs.o.size()) && write_all(out_, rs.lse.data(), 8 * rs.lse.size()) &&
            write_all(out_, rs.entropy.data(), 4 * rs.entropy.size()) &&
            write_all(out_, rs.top_pos.data(), 4 * rs.top_pos.size()) &&
            write_all(out_, rs.top_w.data(), 4 * rs.top_w.size());
  if (!ok) {  // disk full: give up on caching, not on the replay
    std::fclose(out_), out_ = nullptr;
    std::remove(partial_.c_str());
    return;
  }
  sum_ = checksum_layer(sum_, rs);
  ++stored_;
}

void StatsCache::finish() {
  if (!out_) return;
  bool ok = stored_ == L_ && write_all(out_, &sum_, sizeof sum_) && std::fflush(out_) == 0;
  std::fclose(out_), out_ = nullptr;
  if (ok && std::rename(partial_.c_str(), path_.c_str()) == 0) return;
  std::remove(partial_.c_str());
}

}  // namespace kvsim
