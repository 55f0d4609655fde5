// The Llama 2 tokenizer in its two formats (../shared/models/llama2-tokenizer): our llama2.c BPE
// over tokenizer.bin must give the same ids as libsentencepiece over tokenizer.model. The expected
// ids are libsentencepiece's (an independent implementation), plus two hand-checked anchors.
#include <doctest/doctest.h>

#include "model_test_util.h"
#include "traces/model/tokenizer.h"

using namespace kvsim;

TEST_CASE("tokenizer: llama2.c tokenizer.bin and SentencePiece tokenizer.model agree on the Llama 2 vocabulary") {
  const std::string dir = kvsim_test::models_dir() + "/llama2-tokenizer";
  if (!std::filesystem::exists(dir + "/tokenizer.model")) KVSIM_SKIP("../shared/models not found (" << dir << ")");
  model::Llama2cTokenizer bin(dir + "/tokenizer.bin");
  model::SentencePieceTokenizer sp(dir + "/tokenizer.model");
  CHECK(bin.vocab_size() == 32000);
  CHECK(sp.vocab_size() == 32000);
  CHECK(sp.bos_id() == 1);
  CHECK(sp.eos_id() == 2);
  const std::vector<std::string> texts = {
      "Hello world",
      "Once upon a time, there was a little girl named Lily.",
      "The quick brown fox jumps over the lazy dog!",
      "numbers: 0 7 42 1234567890 3.14159 -12,5",
      "Unicode: café, naïve, Zürich, 東京, привет, 😀 emoji",
      "  leading spaces and   inner   runs  ",
      "tabs\tand\nnewlines\n\nend",
      "KV-cache compression (H2O, SnapKV) at 4-bit: 12.5% of fp16.",
      "a",
      "ℵ₀ ≠ 𝔠",
  };
  for (const auto& t : texts) {
    CAPTURE(t);
    const auto a = bin.encode(t, true), b = sp.encode(t, true);
    CHECK(a == b);
    CHECK(sp.decode(b) == t);
  }
  // anchors: "Hello" is one piece, "▁Hello" = 15043 in Llama 2; a lone digit is split (split_digits)
  CHECK(sp.encode("Hello", false) == std::vector<int32_t>{15043});
  CHECK(bin.encode("Hello", false) == std::vector<int32_t>{15043});
}
