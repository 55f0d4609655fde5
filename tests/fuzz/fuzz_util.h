// Shared pieces of the fuzz harnesses (tests/fuzz/CMakeLists.txt): a scratch folder for the files a
// harness writes its input to (the parsers take paths), the fixtures next to the corpora, and the
// rule every harness checks: bad input may only end in a kvsim::Error (one line, exit 2 or 1 in
// `kvsim`); any other exception, a crash or a sanitizer report is a finding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "sim/base/error.h"

namespace kvsim::fuzz {

// A private folder of this process under $TMPDIR (else /tmp), removed at exit.
const std::string& scratch_dir();
std::string scratch(const std::string& name);  // scratch_dir() + "/" + name
void write_file(const std::string& path, const uint8_t* data, size_t size);
std::string read_file(const std::string& path);
// tests/fuzz/fixtures/NAME: the inputs a harness needs besides its fuzzed one (fixtures/README.md).
std::string fixture(const std::string& name);

// Every read a command makes of a trace, each bounded so that a declared size alone cannot make the
// harness allocate past libFuzzer's memory limit: opening (validation), tokens, text, every tensor
// of every layer head by head, and the finiteness scan.
void exercise_trace(const std::string& path);

// Runs f; a kvsim::Error is the expected answer to bad input, except InternalError (an assertion
// of kvsim's own failed: a bug whatever the input). Anything else escaping is reported with its
// message and aborts, which libFuzzer and replay_main.cpp count as a crash. With $KVSIM_FUZZ_VERBOSE
// set, the rejections are printed too (to see which seeds get past the parsers).
template <class F>
void expect_clean(F&& f) {
  try {
    f();
  } catch (const kvsim::InternalError& e) {
    std::fprintf(stderr, "fuzz: kvsim assertion failed: %s\n", e.what());
    std::abort();
  } catch (const kvsim::Error& e) {
    if (std::getenv("KVSIM_FUZZ_VERBOSE")) std::fprintf(stderr, "rejected: %s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: exception other than kvsim::Error escaped: %s\n", e.what());
    std::abort();
  }
}

}  // namespace kvsim::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
