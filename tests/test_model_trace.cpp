// The embedded trace traces/samples/stories260K.h5 (recorded by traces/samples/regenerate.sh):
// attention recomputed here, in double precision, from the recorded q, k, v equals the model's own
// attention output o, layer by layer and head by head.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <vector>

#include "model_test_util.h"
#include "traces/reader.h"

using namespace kvsim;

TEST_CASE("embedded trace: attention recomputed from recorded q, k, v equals the recorded o") {
  const std::string path = KVSIM_SOURCE_DIR "/traces/samples/stories260K.h5";
  REQUIRE(std::filesystem::exists(path));
  traces::TraceReader r(path);
  const auto& h = r.header();
  CHECK(h.architecture == "llama");
  CHECK(h.n_layers == 5);
  CHECK(h.n_heads == 8);
  CHECK(h.n_kv_heads == 4);
  CHECK(h.head_dim == 8);
  CHECK(h.rope_style == "interleaved");
  CHECK(h.stored_dtype == traces::DType::f32);
  CHECK(r.sequences().size() >= 4);
  int64_t checked = 0;
  // The recorder's o is fp32 (dot products of D = 8, softmax over <= 512 slots, weighted sums);
  // this recomputation is double. Declared tolerance: |o - o_ref| <= 1e-5 + 1e-4 |o_ref|.
  const double atol = 1e-5, rtol = 1e-4;
  double worst = 0;
  for (int64_t s = 0; s < static_cast<int64_t>(r.sequences().size()); ++s) {
    const auto& info = r.sequence(s);
    CHECK(info.n_tokens == 512);
    CHECK(info.prefill_len > 0);
    CHECK(info.prefill_len < 64);
    if (!r.has(s, traces::Kind::o)) continue;
    const int64_t T = info.n_tokens, D = h.head_dim, G = h.n_heads / h.n_kv_heads;
    for (int64_t l = 0; l < h.n_layers; ++l) {
      // plain buffers and pointer loops: this runs under ASan at -O0 too
      std::vector<float> q(static_cast<size_t>(h.n_heads * T * D)), o(q.size());
      std::vector<float> k(static_cast<size_t>(h.n_kv_heads * T * D)), v(k.size());
      r.read_block(s, l, traces::Kind::q, 0, h.n_heads, 0, T, q.data());
      r.read_block(s, l, traces::Kind::o, 0, h.n_heads, 0, T, o.data());
      r.read_block(s, l, traces::Kind::k, 0, h.n_kv_heads, 0, T, k.data());
      r.read_block(s, l, traces::Kind::v, 0, h.n_kv_heads, 0, T, v.data());
      std::vector<double> w(static_cast<size_t>(T)), acc(static_cast<size_t>(D));
      const double scale = 1.0 / std::sqrt(static_cast<double>(D));
      for (int64_t hq = 0; hq < h.n_heads; ++hq) {
        const float* K = k.data() + (hq / G) * T * D;
        const float* V = v.data() + (hq / G) * T * D;
        for (int64_t t = 0; t < T; ++t) {
          const float* qt = q.data() + (hq * T + t) * D;
          const float* ot = o.data() + (hq * T + t) * D;
          double mx = -1e300;
          for (int64_t i = 0; i <= t; ++i) {
            double dot = 0;
            for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(qt[d]) * K[i * D + d];
            w[static_cast<size_t>(i)] = dot * scale;
            mx = std::max(mx, dot * scale);
          }
          double sum = 0;
          for (int64_t i = 0; i <= t; ++i)
            sum += (w[static_cast<size_t>(i)] = std::exp(w[static_cast<size_t>(i)] - mx));
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t i = 0; i <= t; ++i)
            for (int64_t d = 0; d < D; ++d) acc[static_cast<size_t>(d)] += w[static_cast<size_t>(i)] * V[i * D + d];
          for (int64_t d = 0; d < D; ++d) {
            const double ref = acc[static_cast<size_t>(d)] / sum;
            const double diff = std::abs(ot[d] - ref);
            worst = std::max(worst, diff);
            if (diff > atol + rtol * std::abs(ref)) {
              FAIL_CHECK("sequence " << info.name << " layer " << l << " head " << hq << " token " << t << " dim " << d
                                     << ": o = " << ot[d] << ", recomputed " << ref);
              return;
            }
          }
        }
      }
      ++checked;
    }
  }
  MESSAGE("worst |o - recomputed| = " << worst << " over " << checked << " layers");
  CHECK(checked >= 5);
}
