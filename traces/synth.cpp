#include "traces/synth.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "sim/base/error.h"
#include "sim/base/rope.h"

namespace kvsim::traces {

const std::vector<SynthShape>& synth_shapes() {
  static const std::vector<SynthShape> shapes = {
      {"tiny", 2, 4, 2, 16, 256, 10000.0, "half"},
      {"stories260k", 5, 8, 4, 8, 512, 10000.0, "interleaved", 172, true, false},
      {"llama2-7b", 32, 32, 32, 128, 32000, 10000.0, "half", 11008, false, false},
      {"llama3-8b", 32, 32, 8, 128, 128256, 500000.0, "half", 14336, false, false},
      {"mistral-7b", 32, 32, 8, 128, 32000, 10000.0, "half", 14336, false, false},
      {"qwen2.5-7b", 28, 28, 4, 128, 152064, 1000000.0, "half", 18944, false, true},
  };
  return shapes;
}

const SynthShape& find_synth_shape(const std::string& name) {
  std::string names;
  for (const auto& s : synth_shapes()) {
    if (s.name == name) return s;
    names += (names.empty() ? "" : ", ") + s.name;
  }
  throw UsageError("unknown shape '" + name + "' (choose " + names + ")");
}

namespace {

// splitmix64: a counter-based stream, so every (layer, head, purpose) draws the same numbers
// whatever the thread schedule.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double normal() {  // Box-Muller
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

uint64_t mix(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  Rng r(seed ^ (a * 0x100000001b3ull) ^ (b << 20) ^ (c << 40));
  r.next();
  return r.next();
}

enum Purpose : uint64_t { kDirs = 1, kKeys, kValues, kQueries, kHeavy, kStrength, kTokens, kOutliers };

std::vector<float> unit_vector(Rng& r, int64_t D) {
  std::vector<float> v(static_cast<size_t>(D));
  double n = 0;
  for (auto& x : v) {
    x = static_cast<float>(r.normal());
    n += static_cast<double>(x) * x;
  }
  for (auto& x : v) x = static_cast<float>(x / std::sqrt(n));
  return v;
}

}  // namespace

void write_synthetic_trace(const std::string& path, const SynthShape& shape, const SynthOptions& opt,
                           const WriterOptions& wopt) {
  if (opt.tokens < 1) throw UsageError("synth: --tokens = " + std::to_string(opt.tokens) + " must be >= 1");
  const int64_t P = opt.prefill < 0 ? opt.tokens / 2 : opt.prefill;
  if (P > opt.tokens)
    throw UsageError("synth: --prefill = " + std::to_string(P) + " exceeds --tokens = " + std::to_string(opt.tokens));
  if (opt.sequences < 1) throw UsageError("synth: --sequences must be >= 1");
  if (opt.layers == 0 || opt.layers > shape.n_layers)
    throw UsageError("synth: --layers = " + std::to_string(opt.layers) + " for shape " + shape.name +
                     " with L = " + std::to_string(shape.n_layers));
  if (opt.heavy_frac < 0 || opt.heavy_frac > 1)
    throw UsageError("synth: heavy_frac = " + std::to_string(opt.heavy_frac) + " must be in [0, 1]");
  if (opt.outlier_channels < 0 || opt.outlier_channels > shape.head_dim)
    throw UsageError("synth: outlier_channels = " + std::to_string(opt.outlier_channels) +
                     " must be in [0, D = " + std::to_string(shape.head_dim) + "]");

  TraceHeader h;
  h.model = "synthetic:" + shape.name;
  h.architecture = "synthetic";
  h.n_layers = opt.layers > 0 ? opt.layers : shape.n_layers;
  h.n_heads = shape.n_heads;
  h.n_kv_heads = shape.n_kv_heads;
  h.head_dim = shape.head_dim;
  h.vocab_size = shape.vocab_size;
  h.rope_theta = shape.rope_theta;
  h.rope_style = shape.rope_style;
  h.stored_dtype = opt.dtype;
  h.recorder = "kvsim synth";
  h.device = "synthetic";
  h.synthetic = true;
  TraceWriter w(path, h, wopt);

  const int64_t T = opt.tokens, D = h.head_dim, H = h.n_heads, Hkv = h.n_kv_heads, G = H / Hkv;
  const RopeStyle style = parse_rope_style(h.rope_style);
  const double sqrtD = std::sqrt(static_cast<double>(D));
  const size_t TD = static_cast<size_t>(T * D);

  for (int64_t s = 0; s < opt.sequences; ++s) {
    const uint64_t sseed = mix(opt.seed, static_cast<uint64_t>(s), kTokens, 0);
    SequenceSpec spec;
    spec.n_tokens = T;
    spec.prefill_len = P;
    spec.context_len = opt.context_len;
    spec.source = "synthetic:" + shape.name + ":seed=" + std::to_string(opt.seed);
    spec.tokens.resize(static_cast<size_t>(T));
    Rng tr(sseed);
    for (auto& t : spec.tokens)
      t = static_cast<int32_t>(tr.next() % static_cast<uint64_t>(std::max<int64_t>(h.vocab_size, 1)));
    if (opt.write_pre) spec.kinds = {Kind::q, Kind::k, Kind::v, Kind::q_pre, Kind::k_pre};
    w.begin_sequence(spec);

    // Heavy hitters are properties of tokens, shared by every layer and head of the sequence.
    std::vector<char> heavy(static_cast<size_t>(T), 0);
    Rng hr(mix(sseed, 0, kHeavy, 0));
    for (int64_t t = opt.sinks; t < T; ++t) heavy[static_cast<size_t>(t)] = hr.uniform() < opt.heavy_frac;

    std::vector<float> q(static_cast<size_t>(H) * TD), k(static_cast<size_t>(Hkv) * TD), v(k.size());
    std::vector<float> q_pre, k_pre;
    if (opt.write_pre) {
      q_pre.resize(q.size());
      k_pre.resize(k.size());
    }
    for (int64_t l = 0; l < h.n_layers; ++l) {
#pragma omp parallel for schedule(dynamic)
      for (int64_t g = 0; g < Hkv; ++g) {
        // Outlier channels: chosen per (layer, KV head), together with their RoPE partners. As in
        // real models, queries are near zero there, so the large key offsets barely move logits.
        std::vector<int64_t> perm(static_cast<size_t>(D));
        std::iota(perm.begin(), perm.end(), 0);
        Rng orng(mix(sseed, static_cast<uint64_t>(l), kOutliers, static_cast<uint64_t>(g)));
        for (int64_t i = D - 1; i > 0; --i)
          std::swap(perm[static_cast<size_t>(i)], perm[orng.next() % static_cast<uint64_t>(i + 1)]);
        std::vector<int64_t> outl(perm.begin(), perm.begin() + opt.outlier_channels);
        std::vector<char> quiet(static_cast<size_t>(D), 0);  // channels where queries are ~0
        for (int64_t ch : outl) {
          const int64_t partner = style == RopeStyle::interleaved ? (ch ^ 1) : (ch < D / 2 ? ch + D / 2 : ch - D / 2);
          quiet[static_cast<size_t>(ch)] = 1;
          if (style != RopeStyle::none && partner < D) quiet[static_cast<size_t>(partner)] = 1;
        }
        Rng dr(mix(sseed, static_cast<uint64_t>(l), kDirs, static_cast<uint64_t>(g)));
        auto direction = [&] {
          std::vector<float> v = unit_vector(dr, D);
          double n = 0;
          for (int64_t d = 0; d < D; ++d) {
            if (quiet[static_cast<size_t>(d)]) v[static_cast<size_t>(d)] = 0;
            n += static_cast<double>(v[static_cast<size_t>(d)]) * v[static_cast<size_t>(d)];
          }
          for (auto& x : v) x = n > 0 ? static_cast<float>(x / std::sqrt(n)) : 0.0f;
          return v;
        };
        // Locality direction (pre-RoPE), on the high-frequency half of the RoPE pairs only: those
        // dephase within a few tokens, so q.k peaks at distance 0 and decays with distance.
        std::vector<float> c = direction();
        {
          double n = 0;
          for (int64_t d = 0; d < D; ++d) {
            const int64_t pair = style == RopeStyle::interleaved ? d / 2 : d % (D / 2);
            if (style != RopeStyle::none && pair >= D / 4) c[static_cast<size_t>(d)] = 0;
            n += static_cast<double>(c[static_cast<size_t>(d)]) * c[static_cast<size_t>(d)];
          }
          for (auto& x : c) x = n > 0 ? static_cast<float>(x / std::sqrt(n)) : 0.0f;
        }
        const std::vector<float> u = direction();   // sink direction (post-RoPE)
        const std::vector<float> hw = direction();  // heavy-hitter direction (post-RoPE)

        // Split each logit target evenly between the query and key magnitudes: a*b/sqrt(D) = target.
        const double kc = std::sqrt(opt.local_logit * sqrtD), ks = std::sqrt(opt.sink_logit * sqrtD),
                     kh = std::sqrt(opt.heavy_logit * sqrtD);
        float* K = k.data() + static_cast<size_t>(g) * TD;
        float* V = v.data() + static_cast<size_t>(g) * TD;
        Rng kr(mix(sseed, static_cast<uint64_t>(l), kKeys, static_cast<uint64_t>(g)));
        Rng vr(mix(sseed, static_cast<uint64_t>(l), kValues, static_cast<uint64_t>(g)));
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t d = 0; d < D; ++d) {
            K[t * D + d] = static_cast<float>(kr.normal() + kc * c[static_cast<size_t>(d)]);
            V[t * D + d] = static_cast<float>(vr.normal() * (t < opt.sinks ? opt.sink_value_scale : 1.0));
          }
          for (int64_t ch : outl) K[t * D + ch] += static_cast<float>(opt.outlier_scale);
        }
        if (opt.write_pre) std::copy(K, K + TD, k_pre.data() + static_cast<size_t>(g) * TD);
        apply_rope(K, T, D, 0, h.rope_theta, style);
        for (int64_t t = 0; t < T; ++t) {
          const bool sink = t < opt.sinks, hv = heavy[static_cast<size_t>(t)];
          if (!sink && !hv) continue;
          for (int64_t d = 0; d < D; ++d)
            K[t * D + d] += static_cast<float>((sink ? ks * u[static_cast<size_t>(d)] : 0.0) +
                                               (hv ? kh * hw[static_cast<size_t>(d)] : 0.0));
        }

        for (int64_t j = 0; j < G; ++j) {
          const int64_t qh = g * G + j;
          Rng sr(mix(sseed, static_cast<uint64_t>(l), kStrength, static_cast<uint64_t>(qh)));
          const double a_loc = kc * (0.6 + 0.8 * sr.uniform()), a_sink = ks * (0.6 + 0.8 * sr.uniform()),
                       a_heavy = kh * (0.6 + 0.8 * sr.uniform());
          float* Q = q.data() + static_cast<size_t>(qh) * TD;
          Rng qr(mix(sseed, static_cast<uint64_t>(l), kQueries, static_cast<uint64_t>(qh)));
          for (int64_t t = 0; t < T; ++t)
            for (int64_t d = 0; d < D; ++d)
              Q[t * D + d] = static_cast<float>(qr.normal() * (quiet[static_cast<size_t>(d)] ? 0.05 : 1.0) +
                                                a_loc * c[static_cast<size_t>(d)]);
          if (opt.write_pre) std::copy(Q, Q + TD, q_pre.data() + static_cast<size_t>(qh) * TD);
          apply_rope(Q, T, D, 0, h.rope_theta, style);
          for (int64_t t = 0; t < T; ++t)
            for (int64_t d = 0; d < D; ++d)
              Q[t * D + d] +=
                  static_cast<float>(a_sink * u[static_cast<size_t>(d)] + a_heavy * hw[static_cast<size_t>(d)]);
        }
      }
      w.write(Kind::q, l, 0, H, 0, T, q.data());
      w.write(Kind::k, l, 0, Hkv, 0, T, k.data());
      w.write(Kind::v, l, 0, Hkv, 0, T, v.data());
      if (opt.write_pre) {
        w.write(Kind::q_pre, l, 0, H, 0, T, q_pre.data());
        w.write(Kind::k_pre, l, 0, Hkv, 0, T, k_pre.data());
      }
    }
    w.end_sequence();
  }
  w.finish();
}

}  // namespace kvsim::traces
