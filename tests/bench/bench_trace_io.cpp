// Trace write and read throughput for a llama3-8b-shape trace of 4096 tokens (a 4-layer slice:
// the per-layer work is identical across layers), against the disk's plain sequential write and
// read speed measured here the same way (same bytes, write + fsync; reads cold: pages evicted
// with posix_fadvise(DONTNEED) first). Throughput counts the bytes of the file on disk.
// tools/scripts/bench_report.py prints the figures as ratios to the disk baseline.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <random>
#include <vector>

#include "traces/reader.h"
#include "traces/writer.h"

using namespace kvsim::traces;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kLayers = 4, kH = 32, kHkv = 8, kT = 4096, kD = 128;

const std::vector<float>& layer_data() {  // [H, T, D], reused for q; the first Hkv heads for k, v
  static std::vector<float> data = [] {
    std::vector<float> v(static_cast<size_t>(kH * kT * kD));
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    for (auto& x : v) x = nd(rng);
    return v;
  }();
  return data;
}

std::string bench_dir() {
  const char* d = std::getenv("KVSIM_BENCH_DIR");
  return d ? d : fs::temp_directory_path().string();
}

void evict(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

TraceHeader header(DType dt) {
  TraceHeader h;
  h.model = "bench";
  h.architecture = "synthetic";
  h.n_layers = kLayers;
  h.n_heads = kH;
  h.n_kv_heads = kHkv;
  h.head_dim = kD;
  h.rope_style = "half";
  h.stored_dtype = dt;
  h.synthetic = true;
  return h;
}

std::string write_trace(DType dt, const std::string& path) {
  fs::remove(path);
  TraceWriter w(path, header(dt));
  SequenceSpec spec;
  spec.n_tokens = kT;
  spec.prefill_len = kT / 2;
  spec.tokens.assign(static_cast<size_t>(kT), 1);
  w.begin_sequence(spec);
  const float* data = layer_data().data();
  for (int64_t l = 0; l < kLayers; ++l) {
    w.write(Kind::q, l, 0, kH, 0, kT, data);
    w.write(Kind::k, l, 0, kHkv, 0, kT, data);
    w.write(Kind::v, l, 0, kHkv, 0, kT, data);
  }
  w.finish();  // includes fsync and rename
  return path;
}

void BM_disk_write(benchmark::State& state) {
  const std::string path = bench_dir() + "/kvsim-bench-disk.bin";
  const size_t bytes = static_cast<size_t>(kLayers * (kH + 2 * kHkv) * kT * kD) * 4;
  const size_t block = 4 << 20;
  std::vector<char> buf(block, 1);
  for (auto _ : state) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (size_t off = 0; off < bytes; off += block)
      if (::write(fd, buf.data(), std::min(block, bytes - off)) < 0) state.SkipWithError("write failed");
    ::fsync(fd);
    ::close(fd);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  fs::remove(path);
}

void BM_disk_read(benchmark::State& state) {
  const std::string path = bench_dir() + "/kvsim-bench-disk.bin";
  const size_t bytes = static_cast<size_t>(kLayers * (kH + 2 * kHkv) * kT * kD) * 4;
  const size_t block = 4 << 20;
  std::vector<char> buf(block, 1);
  {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (size_t off = 0; off < bytes; off += block)
      if (::write(fd, buf.data(), std::min(block, bytes - off)) < 0) state.SkipWithError("write failed");
    ::close(fd);
  }
  for (auto _ : state) {
    state.PauseTiming();
    evict(path);
    state.ResumeTiming();
    int fd = ::open(path.c_str(), O_RDONLY);
    while (::read(fd, buf.data(), block) > 0) {
    }
    ::close(fd);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  fs::remove(path);
}

void BM_trace_write(benchmark::State& state) {
  const DType dt = static_cast<DType>(state.range(0));
  const std::string path = bench_dir() + "/kvsim-bench-w.h5";
  layer_data();
  uint64_t file_bytes = 0;
  for (auto _ : state) {
    write_trace(dt, path);
    file_bytes = fs::file_size(path);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * file_bytes));
  state.SetLabel(dtype_name(dt));
  fs::remove(path);
}

// range(0): the dtype; range(1): 0 cold (pages evicted before each pass), 1 warm (the file in the
// page cache: the reader's own cost, to compare with BM_file_read_warm, `cat FILE > /dev/null`).
void BM_trace_read(benchmark::State& state) {
  const DType dt = static_cast<DType>(state.range(0));
  const bool warm = state.range(1) != 0;
  const std::string path = write_trace(dt, bench_dir() + "/kvsim-bench-r.h5");
  const uint64_t file_bytes = fs::file_size(path);
  std::vector<float> buf(static_cast<size_t>(kT * kD));
  for (auto _ : state) {
    if (!warm) {
      state.PauseTiming();
      evict(path);
      state.ResumeTiming();
    }
    TraceReader r(path);
    for (int64_t l = 0; l < kLayers; ++l)
      for (Kind kind : {Kind::q, Kind::k, Kind::v})
        for (int64_t h = 0; h < r.header().heads_of(kind); ++h) r.read_block(0, l, kind, h, 1, 0, kT, buf.data());
    benchmark::DoNotOptimize(buf.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * file_bytes));
  state.SetLabel(std::string(dtype_name(dt)) + (warm ? " warm" : " cold"));
  fs::remove(path);
}

// What `cat FILE > /dev/null` does on the same warm trace file: read(2) in 128 KiB blocks (cat's
// buffer size) into one buffer. The baseline of BM_trace_read/DTYPE/1.
void BM_file_read_warm(benchmark::State& state) {
  const DType dt = static_cast<DType>(state.range(0));
  const std::string path = write_trace(dt, bench_dir() + "/kvsim-bench-cat.h5");
  const uint64_t file_bytes = fs::file_size(path);
  std::vector<char> buf(128 << 10);
  for (auto _ : state) {
    int fd = ::open(path.c_str(), O_RDONLY);
    while (::read(fd, buf.data(), buf.size()) > 0) {
    }
    ::close(fd);
    benchmark::DoNotOptimize(buf.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * file_bytes));
  state.SetLabel(dtype_name(dt));
  fs::remove(path);
}

}  // namespace

BENCHMARK(BM_disk_write)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_disk_read)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_trace_write)->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_trace_read)->ArgsProduct({{0, 1, 2}, {0, 1}})->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_file_read_warm)->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK_MAIN();
