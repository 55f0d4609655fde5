#include "tests/fuzz/fuzz_util.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "traces/reader.h"

namespace kvsim::fuzz {

namespace fs = std::filesystem;

const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* t = std::getenv("TMPDIR");
    std::string pattern = std::string(t && *t ? t : "/tmp") + "/kvsim-fuzz-XXXXXX";
    if (!::mkdtemp(pattern.data())) {
      std::perror(pattern.c_str());
      std::abort();
    }
    static std::string keep = pattern;
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(keep, ec);
    });
    return pattern;
  }();
  return dir;
}

std::string scratch(const std::string& name) { return scratch_dir() + "/" + name; }

void write_file(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "fuzz: cannot read %s\n", path.c_str());
    std::abort();
  }
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string fixture(const std::string& name) { return std::string(KVSIM_FUZZ_DIR) + "/fixtures/" + name; }

void exercise_trace(const std::string& path) {
  // Allocation from declared sizes is bounded by the reader itself (traces/FORMAT.md); this bound
  // keeps one harness input under libFuzzer's default -rss_limit_mb=2048 whatever that limit is.
  constexpr int64_t kMaxElements = int64_t{1} << 22;
  traces::TraceReader r(path);
  const auto& h = r.header();
  bool small = true;
  for (int64_t s = 0; s < static_cast<int64_t>(r.sequences().size()); ++s) {
    const auto& si = r.sequence(s);
    if (si.n_tokens * h.head_dim > kMaxElements) {
      small = false;
      continue;
    }
    (void)r.tokens(s);
    (void)r.text(s);
    for (int64_t l = 0; l < h.n_layers; ++l)
      for (traces::Kind kind : si.kinds)
        for (int64_t head = 0; head < h.heads_of(kind); ++head) (void)r.read_head(s, l, kind, head);
  }
  if (small) (void)r.check_finite();
}

}  // namespace kvsim::fuzz
