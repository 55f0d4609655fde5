// The llama2.c tokenizer.bin reader: the input is the file; a vocabulary that loads encodes and
// decodes a fixed text with every kind of byte (ASCII, UTF-8 of 2-4 bytes, a stray continuation
// byte, NUL) and gives the piece of every id next to the vocabulary's ends.
#include "tests/fuzz/fuzz_util.h"
#include "traces/model/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = kvsim::fuzz::scratch("tokenizer.bin");
  kvsim::fuzz::write_file(path, data, size);
  kvsim::fuzz::expect_clean([&] {
    kvsim::model::Llama2cTokenizer tok(path);
    static const std::string text =
        std::string("Once upon a time, \xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \x80") + std::string(1, '\0') +
        "<0x41> end";
    const std::vector<int32_t> ids = tok.encode(text, true);
    (void)tok.decode(ids);
    const int32_t V = static_cast<int32_t>(tok.vocab_size());
    for (int32_t id : {0, 1, 2, 3, 258, V - 1}) (void)tok.piece(1, id);
  });
  return 0;
}
