// Trace writer -> reader round trips. Expected values: float32 exact; float16 equal to the
// compiler's _Float16 rounding of the input; bfloat16 equal to the nearest bf16 found by
// comparing both neighbours in double (ties to even), i.e. independent of sim/base/half.h.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "sim/base/error.h"
#include "sim/base/half.h"
#include "sim/replay.h"
#include "sim/strategies/strategy.h"
#include "tests/trace_helpers.h"
#include "traces/reader.h"
#include "traces/synth.h"
#include "traces/writer.h"

using namespace kvsim;
using namespace kvsim::traces;

namespace {

TraceHeader small_header(DType dt) {
  TraceHeader h;
  h.model = "roundtrip";
  h.architecture = "synthetic";
  h.n_layers = 2;
  h.n_heads = 6;
  h.n_kv_heads = 3;
  h.head_dim = 5;
  h.vocab_size = 100;
  h.rope_style = "none";
  h.stored_dtype = dt;
  h.synthetic = true;
  return h;
}

float expected_stored(float x, DType dt) {
  switch (dt) {
    case DType::f32: return x;
    case DType::f16: return static_cast<float>(static_cast<_Float16>(x));
    case DType::bf16: {
      const uint32_t u = f32_bits(x);
      const float lo = bits_f32(u & 0xffff0000u), hi = bits_f32((u & 0xffff0000u) + 0x10000u);
      const double dlo = std::fabs(static_cast<double>(lo) - x), dhi = std::fabs(static_cast<double>(hi) - x);
      if (dlo != dhi) return dlo < dhi ? lo : hi;
      return ((u >> 16) & 1u) ? hi : lo;
    }
  }
  return 0;
}

// Deterministic data for (seq, layer, kind): a spread of magnitudes, including exact halfway cases.
std::vector<float> make_data(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = (i % 17 == 0) ? 1.00390625f * static_cast<float>(i % 5) : nd(rng) * (i % 3 ? 1.0f : 100.0f);
  return v;
}

}  // namespace

TEST_CASE("round trip for every stored dtype, compressed and not, two sequences, block writes") {
  test::TempDir dir;
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    for (bool compress : {false, true}) {
      CAPTURE(dtype_name(dt));
      CAPTURE(compress);
      const std::string path = dir.file(std::string("rt-") + dtype_name(dt) + (compress ? "-z" : "") + ".h5");
      TraceHeader h = small_header(dt);
      WriterOptions wo;
      wo.compress = compress;
      const int64_t Ts[2] = {33, 300};  // 300 > one 256-token chunk
      {
        TraceWriter w(path, h, wo);
        for (int s = 0; s < 2; ++s) {
          const int64_t T = Ts[s];
          SequenceSpec spec;
          spec.n_tokens = T;
          spec.prefill_len = T / 3;
          spec.source = "test";
          spec.text = s == 0 ? "once upon a time" : "";
          for (int64_t t = 0; t < T; ++t) spec.tokens.push_back(static_cast<int32_t>(t * 7 % 100));
          spec.kinds = {Kind::q, Kind::k, Kind::v, Kind::o};
          w.begin_sequence(spec);
          for (int64_t l = 0; l < h.n_layers; ++l) {
            for (Kind kind : spec.kinds) {
              const int64_t heads = h.heads_of(kind);
              auto data = make_data(static_cast<size_t>(heads * T * h.head_dim),
                                    static_cast<uint32_t>(s * 100 + l * 10 + static_cast<int>(kind)));
              if (kind == Kind::q) {
                // token by token, all heads at once (how the recorder writes)
                std::vector<float> row(static_cast<size_t>(heads * h.head_dim));
                for (int64_t t = 0; t < T; ++t) {
                  for (int64_t hh = 0; hh < heads; ++hh)
                    std::memcpy(&row[static_cast<size_t>(hh * h.head_dim)],
                                &data[static_cast<size_t>((hh * T + t) * h.head_dim)],
                                sizeof(float) * static_cast<size_t>(h.head_dim));
                  w.write(kind, l, 0, heads, t, 1, row.data());
                }
              } else {
                for (int64_t hh = 0; hh < heads; ++hh)
                  w.write_head(kind, l, hh, &data[static_cast<size_t>(hh * T * h.head_dim)]);
              }
            }
          }
          w.end_sequence();
        }
        CHECK(std::filesystem::exists(path + ".partial"));
        CHECK_FALSE(std::filesystem::exists(path));
        w.finish();
      }
      CHECK(std::filesystem::exists(path));
      CHECK_FALSE(std::filesystem::exists(path + ".partial"));

      TraceReader r(path);
      CHECK(r.header().n_heads == 6);
      CHECK(r.header().stored_dtype == dt);
      REQUIRE(r.sequences().size() == 2);
      CHECK(r.sequences()[0].name == "0000");
      CHECK(r.sequences()[1].name == "0001");
      CHECK(r.text(0) == "once upon a time");
      CHECK(r.text(1) == "");
      CHECK(r.has(0, Kind::o));
      CHECK_FALSE(r.has(0, Kind::q_pre));
      for (int s = 0; s < 2; ++s) {
        const int64_t T = Ts[s];
        CHECK(r.sequence(s).n_tokens == T);
        CHECK(r.sequence(s).prefill_len == T / 3);
        auto toks = r.tokens(s);
        for (int64_t t = 0; t < T; ++t) REQUIRE(toks[static_cast<size_t>(t)] == t * 7 % 100);
        for (int64_t l = 0; l < h.n_layers; ++l) {
          for (Kind kind : {Kind::q, Kind::k, Kind::v, Kind::o}) {
            const int64_t heads = h.heads_of(kind);
            auto data = make_data(static_cast<size_t>(heads * T * h.head_dim),
                                  static_cast<uint32_t>(s * 100 + l * 10 + static_cast<int>(kind)));
            auto got = r.read_layer(s, l, kind);
            REQUIRE(got.size() == data.size());
            size_t bad = 0;
            for (size_t i = 0; i < data.size(); ++i) {
              const float want = expected_stored(data[i], dt);
              if (f32_bits(got.data()[i]) != f32_bits(want) && bad++ == 0)
                MESSAGE("element " << i << ": got " << got.data()[i] << " want " << want << " (input " << data[i]
                                   << ")");
            }
            CHECK(bad == 0);
            // One head through read_head equals the same slice of read_layer.
            auto head = r.read_head(s, l, kind, heads - 1);
            CHECK(std::memcmp(head.data(), got.data() + (heads - 1) * T * h.head_dim, sizeof(float) * head.size()) ==
                  0);
          }
        }
      }
    }
  }
}

TEST_CASE("writer refuses to overwrite, and an unfinished writer leaves no file") {
  test::TempDir dir;
  const std::string path = dir.file("once.h5");
  SynthOptions o;
  o.tokens = 8;
  write_synthetic_trace(path, find_synth_shape("tiny"), o);
  CHECK_THROWS_AS(write_synthetic_trace(path, find_synth_shape("tiny"), o), UsageError);
  const std::string p2 = dir.file("unfinished.h5");
  {
    TraceWriter w(p2, small_header(DType::f32));
    SequenceSpec spec;
    spec.n_tokens = 4;
    spec.tokens = {1, 2, 3, 4};
    w.begin_sequence(spec);
    CHECK(std::filesystem::exists(p2 + ".partial"));
  }  // destroyed without finish()
  CHECK_FALSE(std::filesystem::exists(p2));
  CHECK_FALSE(std::filesystem::exists(p2 + ".partial"));
}

TEST_CASE("writer rejects bad sequences and incomplete datasets") {
  test::TempDir dir;
  TraceWriter w(dir.file("bad.h5"), small_header(DType::f32));
  SequenceSpec spec;
  spec.n_tokens = 0;
  CHECK_THROWS_AS(w.begin_sequence(spec), UsageError);
  spec.n_tokens = 3;
  spec.tokens = {1, 2};
  CHECK_THROWS_AS(w.begin_sequence(spec), UsageError);
  spec.tokens = {1, 2, 3};
  spec.prefill_len = 4;
  CHECK_THROWS_AS(w.begin_sequence(spec), UsageError);
  spec.prefill_len = 1;
  w.begin_sequence(spec);
  std::vector<float> one(15, 1.0f);
  w.write_head(Kind::k, 0, 0, one.data());
  CHECK_THROWS_AS(w.write_head(Kind::k, 0, 3, one.data()), InternalError);  // head 3 of Hkv = 3
  CHECK_THROWS_AS(w.end_sequence(), InternalError);                         // most datasets unwritten
}

TEST_CASE("synthetic traces are reproducible, marked synthetic, and have the documented structure") {
  test::TempDir dir;
  SynthOptions o;
  o.tokens = 200;
  o.seed = 5;
  write_synthetic_trace(dir.file("a.h5"), find_synth_shape("tiny"), o);
  write_synthetic_trace(dir.file("b.h5"), find_synth_shape("tiny"), o);
  o.seed = 6;
  write_synthetic_trace(dir.file("c.h5"), find_synth_shape("tiny"), o);
  TraceReader a(dir.file("a.h5")), b(dir.file("b.h5")), c(dir.file("c.h5"));
  CHECK(a.header().synthetic);
  CHECK(a.header().device == "synthetic");
  CHECK(a.sequence(0).prefill_len == 100);
  auto ka = a.read_layer(0, 1, Kind::k), kb = b.read_layer(0, 1, Kind::k), kc = c.read_layer(0, 1, Kind::k);
  CHECK(std::memcmp(ka.data(), kb.data(), sizeof(float) * ka.size()) == 0);
  CHECK(std::memcmp(ka.data(), kc.data(), sizeof(float) * ka.size()) != 0);

  // Sinks: averaged over query heads and late steps, the 4 sink tokens take far more attention
  // than 4 typical tokens would (uniform share 4/(t+1)).
  auto q = a.read_layer(0, 1, Kind::q);
  const int64_t T = 200, D = 16, G = 2;
  double sink_mass = 0, uniform = 0;
  int n = 0;
  for (int64_t h = 0; h < 4; ++h) {
    for (int64_t t = 150; t < T; t += 7) {
      std::vector<double> z(static_cast<size_t>(t + 1));
      double mx = -1e300;
      for (int64_t i = 0; i <= t; ++i) {
        double s = 0;
        for (int64_t d = 0; d < D; ++d) s += static_cast<double>(q(h, t, d)) * ka(h / G, i, d);
        z[static_cast<size_t>(i)] = s / 4.0;
        mx = std::max(mx, z[static_cast<size_t>(i)]);
      }
      double sum = 0;
      for (auto& x : z) sum += (x = std::exp(x - mx));
      sink_mass += (z[0] + z[1] + z[2] + z[3]) / sum;
      uniform += 4.0 / static_cast<double>(t + 1);
      ++n;
    }
  }
  MESSAGE("mean sink mass " << sink_mass / n << " vs uniform " << uniform / n);
  CHECK(sink_mass / n > 5 * uniform / n);
}

TEST_CASE("context_len: optional, round-trips, bounded by prefill_len, and is the replay's prefill context") {
  test::TempDir dir;
  SynthOptions o;
  o.tokens = 48, o.prefill = 30, o.context_len = 20;
  const std::string with = dir.file("with.h5"), without = dir.file("without.h5");
  write_synthetic_trace(with, find_synth_shape("tiny"), o);
  o.context_len = -1;
  write_synthetic_trace(without, find_synth_shape("tiny"), o);
  TraceReader a(with), b(without);
  CHECK(a.sequence(0).context_len == 20);
  CHECK(b.sequence(0).context_len == -1);  // files without it stay valid
  auto s = make_strategy("window:budget=8");
  const Strategy* list[] = {s.get()};
  ReplayOptions opt;
  opt.stats_cache = "off";
  opt.prefill = parse_prefill("context", "--prefill");
  CHECK(replay_trace(a, list, opt).P == 20);
  CHECK_THROWS_WITH_AS(replay_trace(b, list, opt), doctest::Contains("has no context_len"), UsageError);
  opt.prefill = parse_prefill("trace", "--prefill");
  CHECK(replay_trace(a, list, opt).P == 30);
  CHECK(parse_prefill("12", "--prefill") == 12);
  CHECK_THROWS_AS(parse_prefill("-3", "--prefill"), UsageError);
  CHECK_THROWS_AS(parse_prefill("ctx", "--prefill"), UsageError);
  o.context_len = 31;  // beyond prefill_len = 30
  CHECK_THROWS_AS(write_synthetic_trace(dir.file("bad.h5"), find_synth_shape("tiny"), o), UsageError);
}

TEST_CASE("every finite float16 code reads back as its exact value (the reader's vector widening)") {
  // Expected: the compiler's _Float16 -> float conversion of each code, independent of both the
  // reader's F16C path and sim/base/half.h. D = 127 so that reads end in a partial vector.
  test::TempDir dir;
  const std::string path = dir.file("f16-codes.h5");
  TraceHeader h = small_header(DType::f16);
  h.n_layers = 1;
  h.n_heads = h.n_kv_heads = 1;
  h.head_dim = 127;
  const int64_t T = 517;  // T * D = 65659 >= 65536 codes
  std::vector<float> data(static_cast<size_t>(T * h.head_dim));
  for (size_t i = 0; i < data.size(); ++i) {
    uint16_t code = static_cast<uint16_t>(i % 65536);
    if ((code & 0x7c00u) == 0x7c00u) code = static_cast<uint16_t>(i % 1024);  // inf/NaN: a subnormal instead
    _Float16 x;
    std::memcpy(&x, &code, sizeof x);
    data[i] = static_cast<float>(x);
  }
  {
    TraceWriter w(path, h);
    SequenceSpec spec;
    spec.n_tokens = T;
    spec.prefill_len = T / 2;
    spec.tokens.assign(static_cast<size_t>(T), 1);
    w.begin_sequence(spec);
    for (Kind kind : {Kind::q, Kind::k, Kind::v}) w.write_head(kind, 0, 0, data.data());
    w.end_sequence();
    w.finish();
  }
  TraceReader r(path);
  const auto got = r.read_head(0, 0, Kind::k, 0);
  REQUIRE(got.size() == data.size());
  size_t bad = 0;
  for (size_t i = 0; i < data.size(); ++i) bad += f32_bits(got.data()[i]) != f32_bits(data[i]);
  CHECK(bad == 0);
  for (int64_t t0 : {int64_t{0}, int64_t{3}, int64_t{500}}) {  // block reads at odd offsets and lengths
    std::vector<float> part(static_cast<size_t>(17 * h.head_dim));
    r.read_block(0, 0, Kind::v, 0, 1, t0, 17, part.data());
    CHECK(std::memcmp(part.data(), data.data() + t0 * h.head_dim, sizeof(float) * part.size()) == 0);
  }
}
