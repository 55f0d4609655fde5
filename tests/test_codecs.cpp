// Codec states (sim/strategies/quant_codecs.h): which tokens are quantized when, what attention then sees, and the
// bytes counted. Expected values are worked out by hand in the comments.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "sim/base/error.h"
#include "sim/base/spec.h"
#include "sim/instance.h"
#include "sim/kernels/kernels.h"
#include "sim/kernels/quant.h"
#include "sim/strategies/quant_codecs.h"
#include "sim/strategies/strategy.h"
#include "tests/sim_test_util.h"

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

TEST_CASE("kivi residual_mode=window: the residual stays fp16 until R + G tokens are pending, then the oldest G are quantized") {
  // D = 8, bits 2, key group G = 4 tokens, residual R = 2, vgroup = min(32, 8) = 8.
  auto cs = codec_state("kivi:bits=2,group=4,residual=2,residual_mode=window", 8, 16);
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
  auto cs = codec_state("kivi:bits=2,group=4,residual=0,residual_mode=window", 8, 16);
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
  // tensor per token -> 9 per token, 72 for 8 tokens. With dq the absmax stays fp32 until 256
  // blocks form a second-level group: 8 tokens are 1 block, so the bytes are nf4's.
  CHECK(nf->bytes(d) == 72.0);
  auto nfdq = codec_state("nf4:dq=1", 8, 16);
  SlotCache e(8, 16);
  for (int32_t t = 0; t < 8; ++t) store(*nfdq, e, t, [](int32_t t2, int x) { return static_cast<float>(t2 * x); });
  CHECK(nfdq->bytes(e) == 72.0);
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

TEST_CASE("kivi residual_mode=paper: 1..R keys fp16 at attention, values the newest R + 1, bytes by hand") {
  // D = 8, bits 2, key group G = 4, R = 4, vgroup = min(32, 8) = 8. KIVI's reference code
  // (models/llama_kivi.py, decode): the new key joins the fp16 residual, attention runs, and once
  // the residual holds R keys they are quantized per channel; the new value joins the R fp16
  // values, attention runs, and the oldest of the R + 1 is quantized per token.
  auto cs = codec_state("kivi:bits=2,group=4,residual=4", 8, 16);
  SlotCache c(8, 16);
  auto key = [](int32_t t, int x) { return x == 0 ? (t == 3 ? 4.0f : static_cast<float>(t)) : static_cast<float>(x); };
  // Bytes by hand: an fp16 key or value 8 * 2 = 16; a quantized key 8 * 2 / 8 + 8 channels * 4 / 4
  // tokens = 10; a quantized value 8 * 2 / 8 + 1 group * 4 = 6.
  const double expect[9] = {
      32,  // t = 0: 1 fp16 key, 1 fp16 value
      64,
      96,
      128,                   // t = 1..3: R = 4 keys pending, none quantized yet
      4 * 10 + 16 + 5 * 16,  // t = 4: keys 0..3 quantized, key 4 fp16 (1 fp16 key); 5 fp16 values
      40 + 32 + 6 + 5 * 16,  // t = 5: keys 4, 5 fp16; value 0 quantized, values 1..5 fp16
      40 + 48 + 12 + 80,     // t = 6
      40 + 64 + 18 + 80,     // t = 7: R = 4 fp16 keys (4..7)
      80 + 16 + 24 + 80,     // t = 8: keys 4..7 quantized, 1 fp16 key (8); values 0..3 quantized
  };
  for (int32_t t = 0; t < 9; ++t) {
    store(*cs, c, t, key);
    CAPTURE(t);
    CHECK(cs->bytes(c) == expect[t]);
  }
  // Keys of tokens 0..3 decoded per channel (channel 0 = [0, 1, 2, 4]: min 0, fp16 scale 4/3 ->
  // 1.3330078125; codes 0, 1, 2, 3); key 8 still exact.
  CHECK(c.key(c.find(1))[0] == 1.3330078125f);
  CHECK(c.key(c.find(3))[0] == 3.9990234375f);
  CHECK(c.key(c.find(8))[0] == 8.0f);
  CHECK(c.exact(c.find(8)));
  // Value of token 0 = [0..7] per token: min 0, scale 7/3 -> fp16 2.333984375; codes
  // floor(x / scale + 0.5) = 0 0 1 1 2 2 3 3.
  const float v0[8] = {0, 0, 2.333984375f, 2.333984375f, 4.66796875f, 4.66796875f, 7.001953125f, 7.001953125f};
  for (int x = 0; x < 8; ++x) CHECK(c.value(c.find(0))[x] == v0[x]);
  // Value of token 4 (newest R + 1 = tokens 4..8) exact although its key is quantized.
  CHECK(c.value(c.find(4))[3] == 43.0f);
  CHECK_FALSE(c.exact(c.find(4)));
}

TEST_CASE("kivi residual_mode=window keeps kvsim's earlier rule, paper needs R a multiple of G") {
  // R = 4, G = 4: once R + G = 8 tokens are pending the oldest 4 (keys and values) are quantized.
  auto cs = codec_state("kivi:bits=2,group=4,residual=4,residual_mode=window", 8, 16);
  SlotCache c(8, 16);
  for (int32_t t = 0; t < 9; ++t) store(*cs, c, t, [](int32_t t2, int x) { return static_cast<float>(t2 + x); });
  CHECK(cs->bytes(c) == 4 * (10 + 6) + 5 * 32);  // tokens 0..3 quantized, 4..8 fp16
  CHECK_THROWS_WITH_AS(codec_state("kivi:group=4,residual=6", 8, 16),
                       "kivi: residual=6 must be a positive multiple of group=4 with residual_mode=paper (the R "
                       "residual keys are quantized as R / G groups)",
                       UsageError);
  CHECK_THROWS_AS(codec_state("kivi:group=4,residual=0", 8, 16), UsageError);
  CHECK_NOTHROW(codec_state("kivi:group=4,residual=0,residual_mode=window", 8, 16));
}

TEST_CASE("nf4:dq=1: a group of 256 blocks is double-quantized, against a plain-loop reference") {
  // D = 64, block 64: one block per token, a second-level group every 256 tokens. Token t's key
  // is seeded noise in [-a_t, a_t] with element 0 = a_t (its absmax), a_t = 0.5 + (t * 37 % 101) / 50.
  const int64_t D = 64, T = 256;
  std::mt19937 g(13);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> k(T * D), v(T * D, 0.25f), a(T);
  for (int64_t t = 0; t < T; ++t) {
    a[t] = 0.5f + static_cast<float>(t * 37 % 101) / 50.0f;
    for (int64_t x = 0; x < D; ++x) k[t * D + x] = x == 0 ? a[t] : a[t] * 0.999f * u(g);
  }
  auto cs = codec_state("nf4:dq=1", D, T);
  SlotCache c(D, T);
  // Plain loops, written from QLoRA's description: codes against the exact absmax (nearest of the
  // 16 values by search), then the absmax values minus their mean as symmetric 8-bit codes.
  auto nearest = [](float r) {
    int best = 0;
    for (int i = 1; i < 16; ++i)
      if (std::fabs(r - kNf4Values[i]) < std::fabs(r - kNf4Values[best])) best = i;
    return best;
  };
  double sum = 0;
  for (float x : a) sum += x;
  const float mean = static_cast<float>(sum / 256.0);
  float m = 0;
  for (float x : a) m = std::max(m, std::fabs(x - mean));
  const float scale = m / 127.0f;
  for (int64_t t = 0; t < T; ++t) {
    cs->store(c, static_cast<int32_t>(t), &k[t * D], &v[t * D]);
    if (t == T - 2) {  // 255 blocks (one per token, quantized on arrival): first level only, exact absmax
      for (int64_t x = 0; x < D; ++x)
        CHECK(c.key(c.find(7))[x] == kNf4Values[nearest(k[7 * D + x] * (1.0f / a[7]))] * a[7]);
      // 255 tokens x 2 tensors x (64 / 2 + 4 for the fp32 absmax)
      CHECK(cs->bytes(c) == 255 * 2 * 36.0);
    }
  }
  double worst = 0;
  for (int64_t t = 0; t < T; ++t) {
    const float q = std::clamp(std::floor((a[t] - mean) / scale + 0.5f), -127.0f, 127.0f);
    const float rec = q * scale + mean;
    for (int64_t x = 0; x < D; ++x) {
      const float first = kNf4Values[nearest(k[t * D + x] * (1.0f / a[t]))];
      const float got = c.key(c.find(static_cast<int32_t>(t)))[x];
      CHECK(got == first * rec);
      worst = std::max(worst, std::fabs(static_cast<double>(got) - first * a[t]));
    }
  }
  CHECK(worst > 0);  // the second level adds error: the absmax no longer round-trips
  // Bytes: per token and tensor 64 / 2 + 1 (8-bit absmax code) + 8 / 256 (the group's fp32 scale and mean).
  CHECK(cs->bytes(c) == 256 * 2 * (32 + 1 + 8.0 / 256));
  CHECK(cs->degeneracies(c).empty());
}

TEST_CASE("degeneracies: a codec that never quantizes and a budget never reached say so, once per cache") {
  auto cs = codec_state("nf4:dq=1", 8, 64);
  SlotCache c(8, 64);
  for (int32_t t = 0; t < 64; ++t) store(*cs, c, t, [](int32_t t2, int x) { return static_cast<float>(t2 - x); });
  // 64 tokens of D = 8 are 8 blocks: the 256 of a second-level group never form.
  CHECK(cs->degeneracies(c) ==
        std::vector<std::string>{
            "nf4: dq=1 never completed a group of 256 blocks for the keys (their absmax values stayed fp32)",
            "nf4: dq=1 never completed a group of 256 blocks for the values (their absmax values stayed fp32)"});
  // window with budget 3 holds at most 4 slots at a store; kivi's keys need 5 pending (keep 1 + R = 4).
  test::Layer L(2, 1, 16, 8);
  L.fill_random(5);
  LayerView lv = L.view();
  auto run = [&](const std::string& spec, int64_t P = 4) {
    auto s = make_strategy(spec);
    Instance inst(*s, make_context(*s, ModelShape{1, 2, 1, 8}, 0, 0, 16, P));
    inst.prefill_from(lv);
    for (int64_t t = P; t < 16; ++t)
      inst.step(lv, t, kernels(Backend::ref).attend_slots, [](const Instance&, int64_t) {});
    return inst.degeneracies();
  };
  CHECK(run("window:budget=3+kivi:group=4,residual=4") ==
        std::vector<std::string>{"kivi: nothing was ever quantized (keys need 5 and values 6 pending fp16 tokens; "
                                 "the cache never held that many)"});
  CHECK(run("window:budget=64") ==
        std::vector<std::string>{
            "window: the cache never dropped a token (its budget was never reached: the run equals full)"});
  CHECK(run("full+kivi:group=4,residual=4").empty());
  // A 12-token prompt is quantized while it is stored (12 > 5 pending), then window keeps the newest 3:
  // every quantized token is evicted, and no later one ever is (1..4 pending keys, at most 4 values).
  CHECK(run("window:budget=3+kivi:group=4,residual=4", 12) ==
        std::vector<std::string>{"kivi: nothing the cache held at the end was quantized (keys need 5 and values 6 "
                                 "pending fp16 tokens; the budget keeps fewer, so only prompt tokens that were then "
                                 "evicted were)"});
}

TEST_CASE("protect= on a codec: protected tokens stay exact, fp16 in bytes, +4 per position unless a prefix") {
  // quant:bits=8, D = 8, group 8: a quantized token 2 * (8 + 4) = 24 bytes, an fp16 one 2 * 16 = 32.
  auto key = [](int32_t t, int x) { return 0.37f * static_cast<float>(t + 1) + 0.11f * static_cast<float>(x); };
  SUBCASE("sinks:2 (a prefix: no position bytes)") {
    auto cs = codec_state("quant:bits=8,protect=sinks:2", 8, 8);
    SlotCache c(8, 8);
    for (int32_t t = 0; t < 4; ++t) store(*cs, c, t, key);
    for (int32_t t = 0; t < 2; ++t) {
      CHECK(c.exact(c.find(t)));
      CHECK(c.key(c.find(t))[3] == key(t, 3));
    }
    for (int32_t t = 2; t < 4; ++t) CHECK_FALSE(c.exact(c.find(t)));
    CHECK(cs->bytes(c) == 2 * 32.0 + 2 * 24.0);
  }
  SUBCASE("a list 1,3 (not a prefix: 4 bytes per held position)") {
    auto cs = codec_state("fp8:scale=one,protect=1,3", 8, 8);
    SlotCache c(8, 8);
    for (int32_t t = 0; t < 4; ++t) store(*cs, c, t, key);
    CHECK(c.exact(c.find(1)));
    CHECK(c.exact(c.find(3)));
    CHECK_FALSE(c.exact(c.find(0)));
    // fp8 scale=one: 2 * 8 bytes per token; protected 32 + 4 each.
    CHECK(cs->bytes(c) == 2 * 16.0 + 2 * 36.0);
    c.remove(c.find(3));  // an evicted protected token costs nothing
    CHECK(cs->bytes(c) == 2 * 16.0 + 36.0);
  }
  CHECK_THROWS_WITH_AS(codec_state("int8:protect=x", 8, 8),
                       "int8: protect=x is not sinks:N or a list of positions (protect=sinks:4, protect=0,5,9)",
                       UsageError);
  CHECK_THROWS_AS(codec_state("kivi:protect=sinks:-1", 8, 8), UsageError);
}
