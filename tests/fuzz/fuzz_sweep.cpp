// The sweep YAML (`kvsim sweep CONFIG.yaml`): the input is the config text, parsed and expanded
// into its grid (seeds: configs/*.yaml). Trace paths resolve against the scratch folder, where no
// trace exists.
#include "tests/fuzz/fuzz_util.h"
#include "tools/sweep_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = kvsim::fuzz::scratch("sweep.yaml");
  const std::string text(reinterpret_cast<const char*>(data), size);
  kvsim::fuzz::expect_clean([&] { (void)kvsim::tools::parse_sweep_config(text, path); });
  return 0;
}
