// The Hugging Face loader's config.json: the input is config.json, loaded with the weights of
// fixtures/hf/model.safetensors (a tiny Llama: dim 8, 1 layer, 2 heads, 1 KV head, vocab 16), so a
// config that parses is checked against real tensors.
#include <filesystem>

#include "tests/fuzz/fuzz_util.h"
#include "traces/model/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  static const std::string dir = [] {
    const std::string d = kvsim::fuzz::scratch("hf");
    fs::create_directories(d);
    fs::copy_file(kvsim::fuzz::fixture("hf/model.safetensors"), d + "/model.safetensors");
    return d;
  }();
  kvsim::fuzz::write_file(dir + "/config.json", data, size);
  kvsim::fuzz::expect_clean([&] { (void)kvsim::model::load_hf(dir); });
  return 0;
}
