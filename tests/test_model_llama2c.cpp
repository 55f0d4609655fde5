// stories260K end to end: loader, tokenizer, RoPE, GQA, attention, FFN and greedy sampling against
// the oracle documented in ../shared/models/README.md (greedy_from_bos_256.json, "Zoo" ids).
#include <doctest/doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "model_test_util.h"
#include "traces/model/model.h"
#include "traces/model/runner.h"
#include "traces/model/sampler.h"
#include "traces/model/tokenizer.h"

using namespace kvsim;

namespace {
std::vector<int32_t> boat_ids() {
  model::Llama2cTokenizer t(kvsim_test::stories_tok());
  return t.encode("Tom had a small red boat. He took it to the pond, and the ducks", true);
}
}  // namespace

TEST_CASE("stories260K: greedy from BOS for 256 steps reproduces greedy_from_bos_256.json") {
  KVSIM_REQUIRE_MODELS();
  std::ifstream in(kvsim_test::models_dir() + "/stories260K/greedy_from_bos_256.json");
  const nlohmann::json oracle = nlohmann::json::parse(in);
  const auto expect = oracle.at("greedy_ids").get<std::vector<int32_t>>();
  REQUIRE(expect.size() == 256);

  const model::Model m = model::load_model(kvsim_test::stories_bin());
  CHECK(m.config.dim == 64);
  CHECK(m.config.n_kv_heads == 4);
  model::Runner runner(m, model::parse_runner_backend("cpu"));
  model::Sampler greedy({});
  std::vector<int32_t> got;
  int32_t tok = 1;
  for (int i = 0; i < 256; ++i) {
    const float* logits = runner.forward(&tok, 1);
    tok = greedy.next(logits, m.config.vocab_size);
    got.push_back(tok);
  }
  CHECK(got == expect);
  model::Llama2cTokenizer t(kvsim_test::stories_tok());
  std::vector<int32_t> with_bos = {1};
  with_bos.insert(with_bos.end(), got.begin(), got.end());
  CHECK(t.decode(with_bos) == oracle.at("text").get<std::string>());
}

TEST_CASE("stories260K: tok512 encodes \"Zoo\" to [1, 410, 469, 347] and round-trips text") {
  KVSIM_REQUIRE_MODELS();
  model::Llama2cTokenizer t(kvsim_test::stories_tok());
  CHECK(t.vocab_size() == 512);
  CHECK(t.encode("Zoo", true) == std::vector<int32_t>{1, 410, 469, 347});  // README oracle
  for (const std::string s : {"Once upon a time, there was a cat.", "Lily said, \"Hi!\"\nTom: 42 = 6 x 7", "héllo ☃"})
    CHECK(t.decode(t.encode(s, true)) == s);  // byte fallback makes any UTF-8 round-trip
  CHECK(t.encode("", true) == std::vector<int32_t>{1});
}

TEST_CASE("stories260K: ref prefill and decode give the same logits") {
  KVSIM_REQUIRE_MODELS();
  const model::Model m = model::load_model(kvsim_test::stories_bin());
  const auto ids = boat_ids();
  const int64_t T = static_cast<int64_t>(ids.size()), V = m.config.vocab_size;

  // prefill of all T tokens (ref: the plain loops are the ground truth)
  model::Runner ref(m, Backend::ref);
  const float* p = ref.forward(ids.data(), T, true);
  const std::vector<float> prefill_ref(p, p + T * V);

  // the same tokens one at a time through the KV cache, on ref: same arithmetic per row, but
  // attention sums over a growing cache, so allow fp32 rounding of 64-wide dot products
  ref.reset();
  std::vector<float> decode_ref;
  for (int64_t t = 0; t < T; ++t) {
    const float* l = ref.forward(&ids[static_cast<size_t>(t)], 1);
    decode_ref.insert(decode_ref.end(), l, l + V);
  }
  kvsim_test::check_close(decode_ref.data(), prefill_ref.data(), T * V, 1e-5, 1e-5, "decode vs prefill (ref)");
}

TEST_CASE("stories260K: omp prefill gives ref's logits") {
  KVSIM_REQUIRE_MODELS();
  KVSIM_REQUIRE_BACKEND(Backend::omp);
  const model::Model m = model::load_model(kvsim_test::stories_bin());
  const auto ids = boat_ids();
  const int64_t T = static_cast<int64_t>(ids.size()), V = m.config.vocab_size;
  model::Runner ref(m, Backend::ref), omp(m, Backend::omp);
  const float* p = ref.forward(ids.data(), T, true);
  const std::vector<float> prefill_ref(p, p + T * V);
  // omp (OpenBLAS sgemm sums in another order): logits of magnitude ~10, fp32 rounding
  const float* q = omp.forward(ids.data(), T, true);
  kvsim_test::check_close(q, prefill_ref.data(), T * V, 1e-4, 1e-5, "prefill omp vs ref");
}
