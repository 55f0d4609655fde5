// The safetensors reader: the input is a whole .safetensors file (8-byte header length, JSON
// header, data), opened and every tensor converted to float32 as the Hugging Face loader does.
#include "tests/fuzz/fuzz_util.h"
#include "traces/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = kvsim::fuzz::scratch("input.safetensors");
  kvsim::fuzz::write_file(path, data, size);
  kvsim::fuzz::expect_clean([&] {
    kvsim::model::SafetensorsFile f(path);
    for (const auto& [name, t] : f.tensors()) (void)kvsim::model::to_f32(t, t.shape, path);
  });
  return 0;
}
