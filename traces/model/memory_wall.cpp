#include "traces/model/memory_wall.h"

#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <new>
#include <sstream>
#include <vector>

#include "sim/base/error.h"
#include "sim/base/kv_cache.h"
#include "traces/model/runner.h"

namespace kvsim::model {

namespace {

int64_t page_bytes() { return static_cast<int64_t>(::sysconf(_SC_PAGESIZE)); }

// An anonymous private mapping that grows in place (or moves, without a copy) by whole pages.
// Growth past the process's RLIMIT_DATA fails with ENOMEM: std::bad_alloc, the runner's growth loop
// catches it.
class GrowingBuffer {
 public:
  GrowingBuffer() = default;
  GrowingBuffer(const GrowingBuffer&) = delete;
  GrowingBuffer& operator=(const GrowingBuffer&) = delete;
  ~GrowingBuffer() {
    if (p_) ::munmap(p_, static_cast<size_t>(cap_));
  }
  // Makes room for `bytes` in total, keeping the contents.
  void reserve(int64_t bytes) {
    if (bytes <= cap_) return;
    const int64_t page = page_bytes();
    const int64_t want = (bytes + page - 1) / page * page;
    void* q =
        p_ ? ::mremap(p_, static_cast<size_t>(cap_), static_cast<size_t>(want), MREMAP_MAYMOVE)
           : ::mmap(nullptr, static_cast<size_t>(want), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (q == MAP_FAILED) throw std::bad_alloc();
    p_ = q, cap_ = want;
  }
  char* data() const { return static_cast<char*>(p_); }

 private:
  void* p_ = nullptr;
  int64_t cap_ = 0;
};

// FullKvCache's semantics (every token exactly, in order, no bias) on growing buffers.
class GrowingKvCache final : public KvCache {
 public:
  explicit GrowingKvCache(int64_t D) : D_(D) {}
  void clear() override { n_ = 0; }
  void append(const float* k, const float* v, int64_t n_tok, int64_t pos0) override {
    const int64_t n = n_ + n_tok;
    const auto row = static_cast<int64_t>(sizeof(float)) * D_;
    k_.reserve(n * row);
    v_.reserve(n * row);
    pos_.reserve(n * static_cast<int64_t>(sizeof(int64_t)));
    std::memcpy(k_.data() + n_ * row, k, static_cast<size_t>(n_tok * row));
    std::memcpy(v_.data() + n_ * row, v, static_cast<size_t>(n_tok * row));
    auto* p = reinterpret_cast<int64_t*>(pos_.data());
    for (int64_t t = 0; t < n_tok; ++t) p[n_ + t] = pos0 + t;
    n_ = n;
  }
  KvView view() const override {
    return KvView{reinterpret_cast<const float*>(k_.data()), reinterpret_cast<const float*>(v_.data()), nullptr,
                  reinterpret_cast<const int64_t*>(pos_.data()), n_};
  }

 private:
  int64_t D_, n_ = 0;
  GrowingBuffer k_, v_, pos_;
};

// The process's data memory now: VmData of /proc/self/status, the quantity RLIMIT_DATA bounds.
int64_t data_bytes_now() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmData:", 0) == 0) {
      std::istringstream s(line.substr(7));
      int64_t kib = 0;
      s >> kib;
      return kib * 1024;
    }
  throw Error("memory wall: /proc/self/status has no VmData line (not Linux?)");
}

// Sets RLIMIT_DATA's soft limit and puts the old one back when it goes out of scope.
class DataLimit {
 public:
  explicit DataLimit(int64_t bytes) {
    if (::getrlimit(RLIMIT_DATA, &old_) != 0) throw Error("memory wall: getrlimit(RLIMIT_DATA) failed");
    rlimit r = old_;
    if (old_.rlim_max != RLIM_INFINITY && static_cast<uint64_t>(bytes) > old_.rlim_max)
      throw UsageError("--mem-limit: the limit " + std::to_string(bytes) + " bytes (with the process's " +
                       "own memory) exceeds the hard RLIMIT_DATA " + std::to_string(old_.rlim_max));
    r.rlim_cur = static_cast<rlim_t>(bytes);
    if (::setrlimit(RLIMIT_DATA, &r) != 0) throw Error("memory wall: setrlimit(RLIMIT_DATA) failed");
  }
  ~DataLimit() { ::setrlimit(RLIMIT_DATA, &old_); }
  DataLimit(const DataLimit&) = delete;
  DataLimit& operator=(const DataLimit&) = delete;

 private:
  rlimit old_{};
};

int32_t argmax(const float* x, int64_t n) { return static_cast<int32_t>(std::max_element(x, x + n) - x); }

}  // namespace

int64_t wall_bytes_per_token(const ModelConfig& c) {
  return c.n_layers * c.n_kv_heads * (2 * c.head_dim * static_cast<int64_t>(sizeof(float)) + 8);
}

int64_t wall_page_tokens(const ModelConfig& c, int64_t limit_bytes) {
  const int64_t page = page_bytes(), caches = c.n_layers * c.n_kv_heads;
  const int64_t row = c.head_dim * static_cast<int64_t>(sizeof(float));
  auto pages = [&](int64_t n) { return caches * (2 * ((n * row + page - 1) / page) + (n * 8 + page - 1) / page); };
  const int64_t held = pages(1), budget = limit_bytes / page;
  // pages(n) grows with n and pages(n) * page >= n * bytes per token: hi does not fit
  int64_t lo = 1, hi = 2 + (limit_bytes + held * page) / wall_bytes_per_token(c);
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (pages(mid) - held <= budget ? lo : hi) = mid;
  }
  return lo;
}

WallResult measure_memory_wall(Model& m, const WallOptions& opt) {
  if (opt.backend != Backend::ref && opt.backend != Backend::omp)
    throw UsageError(std::string("--mem-limit with --backend ") + backend_name(opt.backend) +
                     ": the measured wall runs on the CPU (ref or omp); the GPU runner allocates its whole "
                     "[Hkv, seq_len, D] cache up front, so its wall is a device measurement (cuda/README.md)");
  if (opt.limit_bytes < page_bytes())
    throw UsageError("--mem-limit " + std::to_string(opt.limit_bytes) + " bytes: at least one page (" +
                     std::to_string(page_bytes()) + " bytes)");
  if (opt.max_tokens < 0) throw UsageError("--max-tokens " + std::to_string(opt.max_tokens) + " must be >= 0");
  WallResult r;
  r.limit_bytes = opt.limit_bytes;
  r.bytes_per_token = wall_bytes_per_token(m.config);
  r.predicted_tokens = 1 + opt.limit_bytes / r.bytes_per_token;
  r.page_tokens = wall_page_tokens(m.config, opt.limit_bytes);

  struct SeqLen {  // lifts the context length for the run and puts it back
    ModelConfig& c;
    int64_t old;
    ~SeqLen() { c.seq_len = old; }
  } seq_len{m.config, m.config.seq_len};
  m.config.seq_len = std::numeric_limits<int32_t>::max();

  const auto t0 = std::chrono::steady_clock::now();
  auto runner = std::make_unique<Runner>(
      m, opt.backend, [](int64_t, int64_t, int64_t D, int64_t) { return std::make_unique<GrowingKvCache>(D); });
  int32_t tok = 1;
  // The first step runs before the limit: every buffer of a decode step (activations, logits, a
  // thread pool) exists when the limit is set, so only the context's growth meets it.
  tok = argmax(runner->forward(&tok, 1), m.config.vocab_size);
  int64_t held = 1;
  {
    r.baseline_bytes = data_bytes_now();
    DataLimit limit(r.baseline_bytes + opt.limit_bytes);
    try {
      while (opt.max_tokens == 0 || held < opt.max_tokens) {
        tok = argmax(runner->forward(&tok, 1), m.config.vocab_size);
        ++held;
        if (opt.progress && held % 256 == 0) opt.progress(held);
      }
    } catch (const std::bad_alloc&) {
      r.hit_limit = true;
      r.failure = "std::bad_alloc";
    }
    runner.reset();  // frees the context while the limit still holds; the limit goes next
  }
  r.measured_tokens = held;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace kvsim::model
