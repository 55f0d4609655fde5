// Quantization (sim/kernels/quant.h: quant_uniform, dequant_uniform, quant_nf4, dequant_nf4), the
// harness's family (tests/backend_harness.h): one case list, every case on omp, cuda-host and cuda
// against ref, bit for bit on every target: packed codes, fp16 min and scale, absmax, the
// double-quantization state and the decoded floats (as bit patterns, so -0.0 against 0.0 counts).
// The list holds the shapes, bits, axes and groups of the first ref/omp comparison, plus data
// built to break kernels: T in {1, 31, 33, 97, 4097}, constant and all-zero
// blocks with mixed signed zeros, outlier channels, values whose fp16 scale is subnormal or rounds
// to 0, values near the fp16 limit, and exact rounding ties (uniform: (x - min) / scale = k + 1/2;
// NF4: x / absmax exactly on a midpoint between two code values).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "sim/base/error.h"
#include "sim/kernels/quant.h"
#include "sim/kernels/quant_common.h"
#include "sim/kernels/quant_core.h"
#include "tests/backend_harness.h"

using namespace kvsim;
using test::kBitExact;
using test::Target;

namespace {

enum class Data { normal, outlier, constant, zeros, tiny, tinier, large, ties };

const char* data_name(Data d) {
  switch (d) {
    case Data::normal: return "normal";
    case Data::outlier: return "outlier channels";
    case Data::constant: return "constant blocks";
    case Data::zeros: return "signed zeros";
    case Data::tiny: return "fp16-subnormal scale";
    case Data::tinier: return "scale rounds to 0";
    case Data::large: return "near the fp16 limit";
    case Data::ties: return "rounding ties";
  }
  return "?";
}

// x: [T, D]. `bits` shapes the uniform ties (0 selects the NF4 ties).
std::vector<float> make_data(Data kind, int64_t T, int64_t D, uint32_t seed, int bits) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> x(static_cast<size_t>(T * D));
  const float levels = static_cast<float>((1 << bits) - 1);
  float nf4_mid[15];
  for (int i = 0; i < 15; ++i) nf4_mid[i] = 0.5f * (kNf4Values[i] + kNf4Values[i + 1]);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t d = 0; d < D; ++d) {
      float& v = x[static_cast<size_t>(t * D + d)];
      const float r = nd(rng);
      switch (kind) {
        case Data::normal: v = r; break;
        case Data::outlier:  // a shifted channel (KIVI's key outliers) and rare huge spikes in another
          v = d == 5 % D ? r + 20.0f : (d == D - 1 && t % 7 == 0 ? 3000.0f : r);
          break;
        case Data::constant: v = d == 1 % D ? -3.0f : 1.25f; break;
        case Data::zeros: v = d == 1 % D ? r : (r < 0 ? -0.0f : 0.0f); break;
        case Data::tiny: v = r * 1e-5f; break;
        case Data::tinier: v = r * 1e-9f; break;
        case Data::large: v = std::clamp(r * 2e4f, -6e4f, 6e4f); break;
        case Data::ties: {
          // Any 4 (uniform) or 16 (NF4) consecutive tokens or channels hold every residue of t + d,
          // so each block holds its extremes and lands on exact ties.
          const int64_t k = (t + d) % (bits ? 4 : 16);
          if (bits) {
            const float pattern[4] = {0.0f, levels, 0.5f, levels - 1.5f};  // min 0, scale 1: codes of k + 1/2
            v = pattern[k];
          } else {
            v = k == 0 ? 1.0f : nf4_mid[k - 1];  // absmax 1: x / absmax is the midpoint itself
          }
          break;
        }
      }
    }
  }
  return x;
}

using Shape = std::pair<int64_t, int64_t>;  // (T, D) or (T, group)

struct UCase {
  int64_t T, D;
  int bits;
  QuantAxis axis;
  int64_t group;
  Data data;
  uint32_t seed;
};

struct NCase {
  int64_t T, D;
  QuantAxis axis;
  int64_t block;
  bool dq;
  Data data;
  uint32_t seed;
};

std::string describe(const UCase& c) {
  return "uniform T=" + std::to_string(c.T) + " D=" + std::to_string(c.D) + " bits=" + std::to_string(c.bits) +
         (c.axis == QuantAxis::channel ? " axis=channel" : " axis=token") + " group=" + std::to_string(c.group) +
         " data=" + data_name(c.data) + " seed=" + std::to_string(c.seed);
}
std::string describe(const NCase& c) {
  return "nf4 T=" + std::to_string(c.T) + " D=" + std::to_string(c.D) +
         (c.axis == QuantAxis::channel ? " axis=channel" : " axis=token") + " block=" + std::to_string(c.block) +
         (c.dq ? " dq=1" : " dq=0") + " data=" + data_name(c.data) + " seed=" + std::to_string(c.seed);
}

std::vector<UCase> uniform_cases() {
  std::vector<UCase> cs;
  const QuantAxis tok = QuantAxis::token, ch = QuantAxis::channel;
  // The shapes of the first ref/omp comparison (seed 21 + T, normal data).
  for (auto [T, D] : {Shape{32, 8}, Shape{96, 128}, Shape{4096, 64}, Shape{64, 96}})
    for (int bits : {2, 4, 8}) {
      cs.push_back({T, D, bits, tok, D % 32 == 0 ? 32 : 8, Data::normal, static_cast<uint32_t>(21 + T)});
      cs.push_back({T, D, bits, ch, 32, Data::normal, static_cast<uint32_t>(21 + T)});
    }
  // T off powers of two and larger than a warp; per-channel groups that divide odd T need 8 bits.
  for (int64_t T : {1, 31, 33, 97, 4097})
    for (int bits : {2, 4, 8}) {
      cs.push_back({T, 128, bits, tok, 32, Data::normal, static_cast<uint32_t>(100 + T)});
      cs.push_back({T, 24, bits, tok, 8, Data::normal, static_cast<uint32_t>(200 + T)});
    }
  for (auto [T, g] : {Shape{1, 1}, Shape{31, 31}, Shape{33, 11}, Shape{33, 33}, Shape{97, 97}, Shape{4097, 17}})
    cs.push_back({T, 40, 8, ch, g, Data::normal, static_cast<uint32_t>(300 + T)});
  for (int bits : {2, 4}) {
    cs.push_back({36, 40, bits, ch, 4, Data::normal, 400});
    cs.push_back({100, 24, bits, ch, 100, Data::normal, 401});
    cs.push_back({4100, 8, bits, ch, 20, Data::normal, 402});
  }
  // Adversarial data on both axes and all bit widths.
  for (Data d : {Data::outlier, Data::constant, Data::zeros, Data::tiny, Data::tinier, Data::large, Data::ties})
    for (int bits : {2, 4, 8}) {
      cs.push_back({33, 128, bits, tok, 32, d, 500});
      cs.push_back({97, 24, bits, tok, 8, d, 501});
      cs.push_back({96, 40, bits, ch, 32, d, 502});
      cs.push_back({100, 8, bits, ch, 4, d, 503});
    }
  return cs;
}

std::vector<NCase> nf4_cases() {
  std::vector<NCase> cs;
  const QuantAxis tok = QuantAxis::token, ch = QuantAxis::channel;
  for (bool dq : {false, true}) {
    for (QuantAxis axis : {tok, ch}) {
      // The shapes of the first ref/omp comparison (which ran axis = token), and axis = channel.
      for (auto [T, D] : {Shape{32, 8}, Shape{96, 128}, Shape{4096, 64}, Shape{64, 96}})
        cs.push_back({T, D, axis, 64, dq, Data::normal, static_cast<uint32_t>(21 + T)});
      // T off powers of two; 4097 x 128 is 8194 blocks: 33 double-quantization groups, the last partial.
      for (auto [T, D] : {Shape{1, 64}, Shape{31, 128}, Shape{97, 128}, Shape{4097, 128}})
        cs.push_back({T, D, axis, 64, dq, Data::normal, static_cast<uint32_t>(600 + T)});
      // Small odd blocks that straddle rows (token) or columns (channel).
      cs.push_back({33, 4, axis, 6, dq, Data::normal, 700});
      cs.push_back({97, 6, axis, 2, dq, Data::normal, 701});
      for (Data d : {Data::outlier, Data::constant, Data::zeros, Data::tiny, Data::tinier, Data::large, Data::ties})
        cs.push_back({97, 128, axis, 64, dq, d, 800});
    }
  }
  return cs;
}

void run_uniform_cases(const Kernels& k) {
  const auto cases = uniform_cases();
  MESSAGE(cases.size() << " uniform cases");
  for (const UCase& c : cases) {
    INFO(describe(c));
    const auto x = make_data(c.data, c.T, c.D, c.seed, c.bits);
    const UniformQuantized want = ref::quant_uniform(x.data(), c.T, c.D, c.bits, c.axis, c.group);
    const UniformQuantized got = k.quant_uniform(x.data(), c.T, c.D, c.bits, c.axis, c.group);
    CHECK(got.bits == want.bits);
    CHECK(got.axis == want.axis);
    CHECK(got.group == want.group);
    CHECK(got.n_t == want.n_t);
    CHECK(got.D == want.D);
    test::check_close("codes", got.codes, want.codes, kBitExact);
    test::check_close("fp16 min", got.min_f16, want.min_f16, kBitExact);
    test::check_close("fp16 scale", got.scale_f16, want.scale_f16, kBitExact);
    // The decoder on ref's own codes, so a decoding fault is not masked by an encoding fault.
    std::vector<float> y_want(x.size()), y_got(x.size(), NAN);
    ref::dequant_uniform(want, y_want.data());
    k.dequant_uniform(want, y_got.data());
    test::check_close("decoded", y_got, y_want, kBitExact);
  }
}

void run_nf4_cases(const Kernels& k) {
  const auto cases = nf4_cases();
  MESSAGE(cases.size() << " nf4 cases");
  for (const NCase& c : cases) {
    INFO(describe(c));
    const auto x = make_data(c.data, c.T, c.D, c.seed, 0);
    const Nf4Quantized want = ref::quant_nf4(x.data(), c.T, c.D, c.axis, c.block, c.dq);
    const Nf4Quantized got = k.quant_nf4(x.data(), c.T, c.D, c.axis, c.block, c.dq);
    CHECK(got.axis == want.axis);
    CHECK(got.block == want.block);
    CHECK(got.n_t == want.n_t);
    CHECK(got.D == want.D);
    CHECK(got.double_quant == want.double_quant);
    test::check_close("codes", got.codes, want.codes, kBitExact);
    test::check_close("absmax", got.absmax, want.absmax, kBitExact);
    test::check_close("double-quantized absmax", got.absmax_q, want.absmax_q, kBitExact);
    test::check_close("double-quantization scales", got.dq_scale, want.dq_scale, kBitExact);
    test::check_close("double-quantization mean", &got.dq_mean, &want.dq_mean, 1, kBitExact);
    std::vector<float> y_want(x.size()), y_got(x.size(), NAN);
    ref::dequant_nf4(want, y_want.data());
    k.dequant_nf4(want, y_got.data());
    test::check_close("decoded", y_got, y_want, kBitExact);
  }
}

void check_uniform(Target t) { run_uniform_cases(test::target_kernels(t)); }
void check_nf4(Target t) { run_nf4_cases(test::target_kernels(t)); }

// Empty tiles give empty results, and bad arguments the UsageError ref throws, with ref's message.
void check_edges(Target t) {
  const Kernels& k = test::target_kernels(t);
  auto q = k.quant_uniform(nullptr, 0, 64, 4, QuantAxis::token, 32);
  CHECK(q.codes.empty());
  CHECK(q.scale_f16.empty());
  CHECK(q.min_f16.empty());
  auto n = k.quant_nf4(nullptr, 0, 64, QuantAxis::token, 64, true);
  CHECK(n.codes.empty());
  CHECK(n.absmax_q.empty());
  CHECK(n.dq_mean == 0.0f);
  std::vector<float> x(24, 1.0f);
  CHECK_THROWS_WITH_AS(k.quant_uniform(x.data(), 3, 8, 3, QuantAxis::token, 4),
                       "quantization bits = 3 (choose 2, 4 or 8)", UsageError);
  CHECK_THROWS_WITH_AS(k.quant_uniform(x.data(), 3, 8, 4, QuantAxis::token, 6),
                       "quantization group = 6 does not divide D = 8 (axis = token)", UsageError);
  CHECK_THROWS_AS(k.quant_uniform(x.data(), 3, 8, 4, QuantAxis::channel, 2), UsageError);  // 3 tokens
  CHECK_THROWS_AS(k.quant_uniform(x.data(), 3, 8, 2, QuantAxis::token, 2), UsageError);    // 4 bits per block
  CHECK_THROWS_AS(k.quant_uniform(x.data(), 3, 8, 4, QuantAxis::token, 0), UsageError);
  CHECK_THROWS_AS(k.quant_nf4(x.data(), 3, 8, QuantAxis::token, 64, false), UsageError);
}

}  // namespace

KVSIM_BACKEND_TEST_CASES_NO_HOST("uniform quantization equals ref bit for bit on the harness cases", check_uniform)
KVSIM_BACKEND_TEST_CASES_NO_HOST("nf4 quantization equals ref bit for bit on the harness cases", check_nf4)
KVSIM_BACKEND_TEST_CASES_NO_HOST("quantization of empty tiles and bad arguments behaves as ref", check_edges)

TEST_CASE("cuda-host: uniform code-byte items cover every byte once on the harness cases (no two threads write one byte)") {
  for (const UCase& c : uniform_cases()) {
    INFO(describe(c));
    const auto s = quant::uniform_shape(c.T, c.D, c.bits, c.axis, c.group);
    const int64_t n = core::uniform_code_bytes(s);
    std::vector<int> hits(static_cast<size_t>(n), 0);
    int64_t block = 0, outside = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t byte = core::uniform_codes_item_byte(s, i, &block);
      if (byte < 0 || byte >= n || byte / core::uniform_block_bytes(s) != block)
        ++outside;
      else
        ++hits[static_cast<size_t>(byte)];
    }
    CHECK(outside == 0);
    CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
  }
}
