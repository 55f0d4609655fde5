// Shared by the benchmarks: a llama3-8b-shape synthetic slice (1 layer: H = 32, Hkv = 8, D = 128),
// written once to /tmp and read back as plain arrays, as the replay reads a layer.
#pragma once

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "sim/strategies/strategy.h"
#include "traces/reader.h"
#include "traces/synth.h"

namespace kvsim::bench {

struct Slice {
  std::vector<float> q, k, v, k_norm;
  LayerView lv;
};

inline Slice& llama3_slice(int64_t T) {
  static std::map<int64_t, Slice> cache;
  auto it = cache.find(T);
  if (it != cache.end()) return it->second;
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("kvsim_bench_llama3_T" + std::to_string(T) + "_" + std::to_string(::getpid()) + ".h5"))
                               .string();
  traces::SynthOptions o;
  o.tokens = T, o.layers = 1, o.seed = 1;
  traces::write_synthetic_trace(path, traces::find_synth_shape("llama3-8b"), o);
  Slice& s = cache[T];
  {
    traces::TraceReader r(path);
    auto q = r.read_layer(0, 0, traces::Kind::q), k = r.read_layer(0, 0, traces::Kind::k),
         v = r.read_layer(0, 0, traces::Kind::v);
    s.q.assign(q.begin(), q.end()), s.k.assign(k.begin(), k.end()), s.v.assign(v.begin(), v.end());
    const auto& h = r.header();
    s.lv.H = h.n_heads, s.lv.Hkv = h.n_kv_heads, s.lv.T = T, s.lv.D = h.head_dim;
  }
  std::filesystem::remove(path);
  s.k_norm.resize(s.lv.Hkv * T);
  for (int64_t i = 0; i < s.lv.Hkv * T; ++i) {
    double a = 0;
    for (int64_t x = 0; x < s.lv.D; ++x) a += double(s.k[i * s.lv.D + x]) * s.k[i * s.lv.D + x];
    s.k_norm[i] = float(std::sqrt(a));
  }
  s.lv.q = s.q.data(), s.lv.k = s.k.data(), s.lv.v = s.v.data(), s.lv.k_norm = s.k_norm.data();
  return s;
}

}  // namespace kvsim::bench
