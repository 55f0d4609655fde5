// Write-then-rename outputs never write through a link planted at their temporary name
// (sim/base/new_file.h): NewFile (convert's config.json and model.safetensors) and the sidecar
// cache's `.partial.<pid>` (sim/stats_cache.cpp). The link's target keeps its bytes, the final
// name becomes a plain file with the new bytes, and nothing is left behind without a commit.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "sim/base/new_file.h"
#include "sim/stats_cache.h"
#include "tests/trace_helpers.h"

namespace fs = std::filesystem;
using kvsim::test::TempDir;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

}  // namespace

TEST_CASE("new_file: a link planted at PATH.partial is replaced, its target unchanged") {
  TempDir dir;
  const std::string victim = dir.file("victim"), path = dir.file("config.json");
  spit(victim, "the user's file\n");
  fs::create_symlink(victim, path + ".partial");
  {
    kvsim::NewFile f(path);
    f.write("{}\n", 3);
    f.commit();
  }
  CHECK(slurp(victim) == "the user's file\n");
  CHECK_FALSE(fs::is_symlink(path));
  CHECK(slurp(path) == "{}\n");
  CHECK_FALSE(fs::exists(fs::symlink_status(path + ".partial")));
}

TEST_CASE("new_file: a link at PATH itself is replaced by the rename, its target unchanged") {
  TempDir dir;
  const std::string victim = dir.file("victim"), path = dir.file("model.safetensors");
  spit(victim, "weights elsewhere");
  fs::create_symlink(victim, path);
  {
    kvsim::NewFile f(path);
    f.write("new", 3);
    f.commit();
  }
  CHECK(slurp(victim) == "weights elsewhere");
  CHECK_FALSE(fs::is_symlink(path));
  CHECK(slurp(path) == "new");
}

TEST_CASE("new_file: without commit nothing is left and PATH is untouched") {
  TempDir dir;
  const std::string path = dir.file("config.json");
  spit(path, "old");
  {
    kvsim::NewFile f(path);
    f.write("half", 4);
  }
  CHECK(slurp(path) == "old");
  CHECK_FALSE(fs::exists(fs::symlink_status(path + ".partial")));
}

TEST_CASE("stats cache: a link planted at the sidecar's .partial.<pid> is not written through") {
  TempDir dir;
  const std::string trace = dir.file("t.h5"), victim = dir.file("victim"), cache = dir.file("cache");
  spit(trace, "any bytes: the sidecar is keyed by their hash");
  spit(victim, "precious");
  const int64_t L = 1, H = 1, T = 3, D = 2;
  std::string path;
  {  // learn the sidecar's name (a cache that is never finished leaves nothing)
    kvsim::StatsCache probe(trace, 0, kvsim::Backend::ref, L, H, T, D, cache);
    REQUIRE(probe.enabled());
    path = probe.path();
  }
  REQUIRE_FALSE(fs::exists(path));
  fs::create_symlink(victim, path + ".partial." + std::to_string(::getpid()));
  {
    kvsim::StatsCache c(trace, 0, kvsim::Backend::ref, L, H, T, D, cache);
    REQUIRE_FALSE(c.hit());
    kvsim::ExactStats rs;
    rs.resize(H, T, D);
    c.store(0, rs);
    c.finish();
  }
  CHECK(slurp(victim) == "precious");
  CHECK(fs::is_regular_file(fs::symlink_status(path)));
  kvsim::StatsCache again(trace, 0, kvsim::Backend::ref, L, H, T, D, cache);
  CHECK(again.hit());
}
