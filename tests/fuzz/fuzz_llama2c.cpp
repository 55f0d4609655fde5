// The llama2.c checkpoint loader: the input is a whole checkpoint (7 int32 header fields, then the
// float32 tensors whose sizes the header implies).
#include "tests/fuzz/fuzz_util.h"
#include "traces/model/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = kvsim::fuzz::scratch("input.bin");
  kvsim::fuzz::write_file(path, data, size);
  kvsim::fuzz::expect_clean([&] { (void)kvsim::model::load_llama2c(path); });
  return 0;
}
