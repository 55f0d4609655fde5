// Codec states (sim/strategies/quant_codecs.h): which tokens are quantized when, what attention then sees, and the
// bytes counted. Expected values are worked out by hand in the comments.
#include <doctest/doctest.h>

#include <cmath>

#include "sim/base/error.h"
#include "sim/base/spec.h"
#include "sim/strategies/quant_codecs.h"
#include "sim/strategies/strategy.h"

using namespace kvsim;

namespace {

std::unique_ptr<CodecState> codec_state(const std::string& spec, int64_t D, int64_t T) {
  return make_codec(parse_spec(spec))->make_state(D, T);
}

// Token t: key channel c = key_fn(t, c), value channel c = 10 * t + c.
template <class F>
void store(CodecState& cs, SlotCache& c, int32_t t, F key_fn) {
  float k[8], v[8];
  for (int x = 0; x < 8; ++x) {
    k[x] = key_fn(t, x);
    v[x] = static_cast<float>(10 * t + x);
  }
  cs.store(c, t, k, v);
}

}  // namespace

TEST_CASE("kivi: the residual stays fp16 until R + G tokens are pending, then the oldest G are quantized") {
  // D = 8, bits 2, key group G = 4 tokens, residual R = 2, vgroup = min(32, 8) = 8.
  auto cs = codec_state("kivi:bits=2,group=4,residual=2", 8, 16);
  SlotCache c(8, 16);
  // Key channel 0 over tokens 0..3 is [0, 1, 2, 4]; other channels small integers.
  auto key = [](int32_t t, int x) { return x == 0 ? (t == 3 ? 4.0f : static_cast<float>(t)) : static_cast<float>(x); };
  for (int32_t t = 0; t < 5; ++t) store(*cs, c, t, key);
  for (int64_t s = 0; s < 5; ++s) CHECK(c.exact(s));
  CHECK(cs->bytes(c) == 5 * 32.0);  // fp16 key + value: 2 * 8 * 2 bytes per token
  store(*cs, c, 5, key);            // 6 pending = R + G: tokens 0..3 quantized
  for (int32_t t = 0; t < 4; ++t) CHECK_FALSE(c.exact(c.find(t)));
  CHECK(c.exact(c.find(4)));
  CHECK(c.exact(c.find(5)));
  // Channel 0, per-channel 2-bit: min 0, scale 4/3 -> fp16 1.3330078125 (2730 * 2^-11);
  // 1 -> code floor(0.7502 + 0.5) = 1; 2 -> floor(1.5004 + 0.5) = 2; 4 -> 3.
  CHECK(c.key(c.find(0))[0] == 0.0f);
  CHECK(c.key(c.find(1))[0] == 1.3330078125f);
  CHECK(c.key(c.find(2))[0] == 2.666015625f);
  CHECK(c.key(c.find(3))[0] == 3.9990234375f);
  CHECK(c.key(c.find(3))[5] == 5.0f);  // a constant channel decodes exactly (scale 0 -> min)
  // Bytes per quantized token: keys 8 * 2 / 8 + 8 channels * 4 bytes / 4 tokens = 10; values
  // 8 * 2 / 8 + 1 group * 4 = 6. Total 4 * 16 + 2 fp16 tokens * 32 = 128.
  CHECK(cs->bytes(c) == 128.0);
}

TEST_CASE("codecs skip tokens evicted before their group formed") {
  auto cs = codec_state("kivi:bits=2,group=4,residual=0", 8, 16);
  SlotCache c(8, 16);
  auto key = [](int32_t t, int x) { return static_cast<float>(t + x); };
  for (int32_t t = 0; t < 3; ++t) store(*cs, c, t, key);
  c.remove(c.find(1));  // evicted while pending
  for (int32_t t = 3; t < 5; ++t) store(*cs, c, t, key);
  // Pending now 0, 2, 3, 4: a full group; all four quantized.
  for (int32_t t : {0, 2, 3, 4}) CHECK_FALSE(c.exact(c.find(t)));
  CHECK(c.size() == 4);
}

TEST_CASE("quant per token quantizes on arrival and nf4 blocks of 64 span 8 tokens of D = 8") {
  auto q8 = codec_state("quant:bits=8", 8, 4);
  SlotCache c(8, 4);
  store(*q8, c, 0, [](int32_t, int x) { return static_cast<float>(x) * 0.1f; });
  CHECK_FALSE(c.exact(0));
  // Per token, group = min(32, D) = 8: payload 8 bytes + fp16 scale and min (4) for keys and values.
  CHECK(q8->bytes(c) == 24.0);

  auto nf = codec_state("nf4", 8, 16);
  SlotCache d(8, 16);
  for (int32_t t = 0; t < 7; ++t) store(*nf, d, t, [](int32_t t2, int x) { return static_cast<float>(t2 - x); });
  CHECK(d.exact(0));
  store(*nf, d, 7, [](int32_t t2, int x) { return static_cast<float>(t2 - x); });
  CHECK_FALSE(d.exact(0));
  CHECK_FALSE(d.exact(7));
  // nf4: 4 bits per element + an fp32 absmax per 64 elements: 8 * 0.5 + 8 * 4 / 64 = 4.5 bytes per
  // tensor per token -> 9 per token, 72 for 8 tokens. With dq: 4 + 8/64 + 8*4/(64*256) per
  // tensor plus one fp32 mean per tensor and cache.
  CHECK(nf->bytes(d) == 72.0);
  auto nfdq = codec_state("nf4:dq=1", 8, 16);
  SlotCache e(8, 16);
  for (int32_t t = 0; t < 8; ++t) store(*nfdq, e, t, [](int32_t t2, int x) { return static_cast<float>(t2 * x); });
  CHECK(nfdq->bytes(e) == doctest::Approx(8 * 2 * (4.0 + 0.125 + 32.0 / (64 * 256)) + 8.0));
}

TEST_CASE("composition: strategy+codec names, parameters and codec-only specs") {
  auto s = make_strategy("h2o:budget=16+kivi:bits=2");
  CHECK(s->name() == "h2o+kivi");
  CHECK(s->spec_text() == "h2o:budget=16+kivi:bits=2");
  CHECK(s->params().at("budget") == "16");
  CHECK(s->params().at("kivi.bits") == "2");
  CHECK(s->params().at("kivi.residual") == "32");
  CHECK(s->codec().name() == "kivi");
  auto k = make_strategy("nf4:dq=1");
  CHECK(k->name() == "full+nf4");
  CHECK(make_strategy("h2o:budget=16")->codec().name() == "identity");
  CHECK_THROWS_AS(make_strategy("h2o:budget=16+kivi:bits=2,colour=red"), UsageError);
}
