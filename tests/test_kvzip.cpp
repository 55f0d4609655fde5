// KVzip's context-reconstruction scores (traces/model/kvzip.h): the score of a chunk on cases small enough
// to compute by hand (the logits are chosen as logarithms, so every softmax is a ratio of small integers),
// the chunks and repeat sequences of kvpress KVzipPress.prepare on the real tokenizer, and the recorder's
// refusals. tests/py/test_kvzip_numpy.py checks every recorded score of stories260K against an independent
// PyTorch + NumPy implementation.
#include <doctest/doctest.h>

#include <cmath>

#include "model_test_util.h"
#include "sim/base/error.h"
#include "traces/model/kvzip.h"

using namespace kvsim;

TEST_CASE("kvzip scores: softmax over sinks, the chunk and the repeat (causal), max over queries and heads") {
  // D = 1 (scale 1), one KV head. The first chunk (no sinks): chunk keys 0, ln 3; repeat keys 0, 0;
  // repeat queries 1, 2.
  //   j = 0: logits over [chunk 0, chunk 1, rep 0] = [0, ln 3, 0] -> [1, 3, 1] / 5 -> chunk 0.2, 0.6
  //   j = 1: logits [0, 2 ln 3, 0, 0] -> [1, 9, 1, 1] / 12 -> chunk 1/12, 0.75
  // max over j: 0.2, 0.75.
  const float l3 = std::log(3.0f), l4 = std::log(4.0f);
  const float k_chunk[] = {0.0f, l3}, k_rep[] = {0.0f, 0.0f};
  {
    const float q_rep[] = {1.0f, 2.0f};
    float score[2] = {-1, -1};
    model::kvzip_chunk_scores(q_rep, k_rep, 2, nullptr, 0, k_chunk, 2, 1, 1, 1, score, 2);
    CHECK(score[0] == doctest::Approx(0.2).epsilon(1e-6));
    CHECK(score[1] == doctest::Approx(0.75).epsilon(1e-6));
  }
  {  // A later chunk with one sink key ln 4:
    //   j = 0: [4, 1, 3, 1] / 9 -> chunk 1/9, 1/3;  j = 1: [16, 1, 9, 1, 1] / 28 -> chunk 1/28, 9/28.
    // Written at stride ld = 5 (the context length) from the chunk's start.
    const float q_rep[] = {1.0f, 2.0f}, k_sink[] = {l4};
    float score[5] = {7, 7, 7, 7, 7};
    model::kvzip_chunk_scores(q_rep, k_rep, 2, k_sink, 1, k_chunk, 2, 1, 1, 1, score + 3, 5);
    CHECK(score[3] == doctest::Approx(1.0 / 9).epsilon(1e-6));
    CHECK(score[4] == doctest::Approx(1.0 / 3).epsilon(1e-6));
    CHECK(score[0] == 7.0f);  // outside the chunk: untouched
  }
  {  // GQA: a second query head with zero queries attends uniformly, 1/3 (j = 0) and 1/4 (j = 1), so
    // the max over the group lifts chunk 0 from 0.2 to 1/3 and leaves 0.75. q_rep is [n, H, D].
    const float q_rep[] = {1.0f, 0.0f, 2.0f, 0.0f};
    float score[2];
    model::kvzip_chunk_scores(q_rep, k_rep, 2, nullptr, 0, k_chunk, 2, 2, 1, 1, score, 2);
    CHECK(score[0] == doctest::Approx(1.0 / 3).epsilon(1e-6));
    CHECK(score[1] == doctest::Approx(0.75).epsilon(1e-6));
  }
}

TEST_CASE("kvzip chunks: the reference's prompts, the previous chunk's last 8 ids, the suffix, the chunk") {
  KVSIM_REQUIRE_MODELS();
  const model::Llama2cTokenizer tok(kvsim_test::stories_tok());
  std::vector<int32_t> ctx;
  for (int32_t i = 0; i < 21; ++i) ctx.push_back(300 + i);
  const auto first = tok.encode("\n\nRepeat the previous context exactly.", false),
             later = tok.encode("\n\nRepeat the part of the previous context exactly, starting with", false),
             nl = tok.encode("\n", false);
  REQUIRE(!first.empty());
  REQUIRE(!nl.empty());
  const auto chunks = model::kvzip_chunks(ctx, tok, 10);  // [0, 10), [10, 20), [20, 21)
  REQUIRE(chunks.size() == 3);
  const auto cat = [](std::vector<std::vector<int32_t>> parts) {
    std::vector<int32_t> out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  };
  const auto slice = [&](int64_t a, int64_t b) { return std::vector<int32_t>(ctx.begin() + a, ctx.begin() + b); };
  CHECK(chunks[0].start == 0);
  CHECK(chunks[0].end == 10);
  CHECK(chunks[0].repeat == cat({first, nl, slice(0, 10)}));
  CHECK(chunks[1].repeat == cat({later, slice(2, 10), nl, slice(10, 20)}));
  CHECK(chunks[2].start == 20);
  CHECK(chunks[2].end == 21);
  CHECK(chunks[2].repeat == cat({later, slice(12, 20), nl, slice(20, 21)}));
  // A context of one chunk: the first prompt only.
  CHECK(model::kvzip_chunks(ctx, tok).size() == 1);
}

TEST_CASE("kvzip scores: a context whose repeat does not fit the model's context length is refused") {
  KVSIM_REQUIRE_MODELS();
  const model::Model m = model::load_model(kvsim_test::stories_bin());
  model::Runner runner(m, Backend::ref);
  const model::Llama2cTokenizer tok(kvsim_test::stories_tok());
  std::vector<int32_t> ctx(300, 400);  // 300 + the repeat of 300 > seq_len 512
  ctx[0] = 1;
  try {
    model::kvzip_scores(runner, ctx, model::kvzip_chunks(ctx, tok), "p0");
    FAIL("no error");
  } catch (const UsageError& e) {
    CHECK(std::string(e.what()).find("p0: --record kvzip: the context of 300 tokens and the repeat of its chunk 0") !=
          std::string::npos);
    CHECK(std::string(e.what()).find("seq_len = 512") != std::string::npos);
  }
  // In chunks of 100 each repeat fits (300 + 100 + the prompt): every score is a probability.
  const auto s = model::kvzip_scores(runner, ctx, model::kvzip_chunks(ctx, tok, 100), "p0");
  REQUIRE(s.size() == 5);
  for (const auto& layer : s)
    for (float x : layer) CHECK((x > 0 && x <= 1));
}
