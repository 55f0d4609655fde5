// The trace reader on whole files: the input is an HDF5 file (seeds: corpus/trace/, slices of
// traces/samples/stories260K.h5 and synthetic traces), opened and read as `kvsim info --check` and
// `kvsim run` read it.
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = kvsim::fuzz::scratch("input.h5");
  kvsim::fuzz::write_file(path, data, size);
  kvsim::fuzz::expect_clean([&] { kvsim::fuzz::exercise_trace(path); });
  return 0;
}
