#include "traces/model/kvzip.h"

#include <algorithm>
#include <cmath>

#include "sim/base/error.h"

namespace kvsim::model {

std::vector<KvzipChunk> kvzip_chunks(const std::vector<int32_t>& context, const Tokenizer& tok, int64_t chunk) {
  KVSIM_ASSERT(chunk >= 1);
  const int64_t C = static_cast<int64_t>(context.size());
  const std::vector<int32_t> first = tok.encode("\n\nRepeat the previous context exactly.", false),
                             later = tok.encode("\n\nRepeat the part of the previous context exactly, starting with",
                                                false),
                             suffix = tok.encode("\n", false);
  std::vector<KvzipChunk> out;
  for (int64_t start = 0; start < C; start += chunk) {
    KvzipChunk c;
    c.start = start, c.end = std::min(C, start + chunk);
    if (start == 0) {
      c.repeat = first;
    } else {
      c.repeat = later;  // + the previous chunk's last kKvzipPrev ids
      c.repeat.insert(c.repeat.end(), context.begin() + std::max(start - chunk, start - kKvzipPrev),
                      context.begin() + start);
    }
    c.repeat.insert(c.repeat.end(), suffix.begin(), suffix.end());
    c.repeat.insert(c.repeat.end(), context.begin() + c.start, context.begin() + c.end);
    out.push_back(std::move(c));
  }
  return out;
}

void kvzip_chunk_scores(const float* q_rep, const float* k_rep, int64_t n, const float* k_sink, int64_t ns,
                        const float* k_chunk, int64_t m, int64_t H, int64_t Hkv, int64_t D, float* score, int64_t ld) {
  const int64_t G = H / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> z(static_cast<size_t>(ns + m + n)), best(static_cast<size_t>(m));
  const auto dot = [&](const float* a, const float* b) {
    double s = 0;
    for (int64_t d = 0; d < D; ++d) s += static_cast<double>(a[d]) * static_cast<double>(b[d]);
    return s * scale;
  };
  for (int64_t kv = 0; kv < Hkv; ++kv) {
    std::fill(best.begin(), best.end(), 0.0);
    for (int64_t g = 0; g < G; ++g)
      for (int64_t j = 0; j < n; ++j) {
        const float* q = q_rep + (j * H + kv * G + g) * D;
        // keys: sinks, the chunk, the repeat up to itself (causal)
        const int64_t nk = ns + m + j + 1;
        double mx = -INFINITY;
        for (int64_t i = 0; i < nk; ++i) {
          const float* k = i < ns       ? k_sink + (i * Hkv + kv) * D
                           : i < ns + m ? k_chunk + ((i - ns) * Hkv + kv) * D
                                        : k_rep + ((i - ns - m) * Hkv + kv) * D;
          z[static_cast<size_t>(i)] = dot(q, k);
          mx = std::max(mx, z[static_cast<size_t>(i)]);
        }
        double sum = 0;
        for (int64_t i = 0; i < nk; ++i) sum += z[static_cast<size_t>(i)] = std::exp(z[static_cast<size_t>(i)] - mx);
        for (int64_t i = 0; i < m; ++i)
          best[static_cast<size_t>(i)] = std::max(best[static_cast<size_t>(i)], z[static_cast<size_t>(ns + i)] / sum);
      }
    for (int64_t i = 0; i < m; ++i) score[kv * ld + i] = static_cast<float>(best[static_cast<size_t>(i)]);
  }
}

std::vector<std::vector<float>> kvzip_scores(Runner& runner, const std::vector<int32_t>& context,
                                             const std::vector<KvzipChunk>& chunks, const std::string& what) {
  const ModelConfig& c = runner.model().config;
  const int64_t C = static_cast<int64_t>(context.size()), L = c.n_layers, H = c.n_heads, Hkv = c.n_kv_heads,
                D = c.head_dim;
  std::vector<std::vector<float>> out(static_cast<size_t>(L), std::vector<float>(static_cast<size_t>(Hkv * C)));
  std::vector<std::vector<float>> sink(static_cast<size_t>(L)), part(static_cast<size_t>(L));
  TapKinds kinds;
  kinds.pre = false, kinds.output = false;
  for (size_t ci = 0; ci < chunks.size(); ++ci) {
    const KvzipChunk& ch = chunks[ci];
    const int64_t n = static_cast<int64_t>(ch.repeat.size()), ns = std::min(kKvzipSinks, ch.start),
                  m = ch.end - ch.start;
    if (C + n > c.seq_len)
      throw UsageError(what + ": --record kvzip: the context of " + std::to_string(C) +
                       " tokens and the repeat of its chunk " + std::to_string(ci) + " (" + std::to_string(n) +
                       " tokens) exceed the context length seq_len = " + std::to_string(c.seq_len));
    // The context's sink and chunk keys, as the cache holds them.
    const LayerTap keep = [&](const LayerTensors& lt) {
      auto& s = sink[static_cast<size_t>(lt.layer)];
      auto& p = part[static_cast<size_t>(lt.layer)];
      s.resize(static_cast<size_t>(ns * Hkv * D)), p.resize(static_cast<size_t>(m * Hkv * D));
      for (int64_t t = 0; t < lt.T; ++t) {
        const int64_t pos = lt.pos0 + t;
        const float* k = lt.k + t * Hkv * D;
        if (pos < ns) std::copy_n(k, Hkv * D, s.data() + pos * Hkv * D);
        if (pos >= ch.start && pos < ch.end) std::copy_n(k, Hkv * D, p.data() + (pos - ch.start) * Hkv * D);
      }
    };
    const LayerTap score = [&](const LayerTensors& lt) {
      const size_t l = static_cast<size_t>(lt.layer);
      kvzip_chunk_scores(lt.q, lt.k, lt.T, sink[l].data(), ns, part[l].data(), m, H, Hkv, D, out[l].data() + ch.start,
                         C);
    };
    runner.reset();
    runner.forward(context.data(), C, false, keep, kinds);
    runner.wait_taps();
    runner.forward(ch.repeat.data(), n, false, score, kinds);
    runner.wait_taps();
  }
  return out;
}

}  // namespace kvsim::model
