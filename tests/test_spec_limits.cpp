// Integer parameters at their extremes: every integer parameter of every strategy and codec is
// refused with one UsageError at INT64_MAX, INT64_MIN, 2^31 (one past kMaxIntParam) and just below
// its smallest valid value, before any arithmetic sees it (sim/base/spec.h). The table lists each
// parameter by hand, with a base spec that is valid without it and the smallest value it takes.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "sim/base/error.h"
#include "sim/base/spec.h"
#include "sim/strategies/strategy.h"

using namespace kvsim;

namespace {

struct IntParam {
  const char* base;  // a valid spec without the parameter ("" for none)
  const char* key;
  int64_t lo;         // smallest valid value
  bool seed = false;  // a seed: every value in [0, INT64_MAX] is valid
};

// clang-format off (a table)
const std::vector<IntParam> kParams = {
    {"window:", "budget", 1},
    {"h2o:", "budget", 1},
    {"h2o:budget=64,", "sinks", 0},
    {"h2o:budget=64,", "recent", -1},
    {"tova:", "budget", 1},
    {"knorm:", "budget", 1},
    {"random:budget=64,", "seed", 0, true},
    {"streaming:budget=64,", "sinks", 0},
    {"streaming:budget=64,", "prefix", 0},
    {"streaming:budget=64,prefix=1,", "block", -1},
    {"scissorhands:budget=64,", "history", 1},
    {"snapkv:budget=64,", "window", 1},
    {"snapkv:budget=64,", "kernel", 1},
    {"pyramidkv:budget=64,", "window", 1},
    {"pyramidkv:budget=64,", "kernel", 1},
    {"entropy_merge:budget=64,", "max_span", 2},
    {"entropy_merge:budget=64,", "prop", 0},
    {"cam:budget=64,", "m", 1},
    {"cam:budget=64,", "seed", 0, true},
    {"cms_topk:budget=64,", "width", 1},
    {"cms_topk:budget=64,", "depth", 1},
    {"cms_topk:budget=64,", "seed", 0, true},
    {"cms_aggregate:budget=64,", "width", 1},
    {"cms_aggregate:budget=64,", "depth", 1},
    {"cms_aggregate:budget=64,", "seed", 0, true},
    {"cms_aggregate:budget=64,", "prop", 0},
    {"kvmerger:budget=64,", "max_span", 2},
    {"kvmerger:budget=64,", "prop", 0},
    {"oracle_topk:", "budget", 1},
    {"quest:budget=64,", "page", 1},
    {"quest:budget=64,", "last", 0},
    {"quest:budget=64,", "dense_layers", 0},
    {"sparq:", "k", 1},
    {"sparq:k=8,", "r", -1},
    {"sparq:k=8,", "vmean", 0},
    {"sparq:k=8,", "kcopy", 0},
    {"magicpig:", "K", 1},
    {"magicpig:", "L", 2},
    {"magicpig:", "sinks", 0},
    {"magicpig:", "local", 0},
    {"magicpig:", "seed", 0, true},
    {"magicpig:", "dense_layers", 0},
    {"pqcache:", "sinks", 0},
    {"pqcache:", "local", 0},
    {"pqcache:", "m", 1},
    {"pqcache:", "bits", 1},
    {"pqcache:", "iters", 1},
    {"pqcache:", "budget", 1},
    {"rocketkv:budget=64,", "window", 1},
    {"rocketkv:budget=64,", "kernel", 1},
    {"shadowkv:", "budget", 1},
    {"shadowkv:", "rank", 1},
    {"shadowkv:", "chunk", 1},
    {"shadowkv:", "outliers", 0},
    {"shadowkv:", "local", 0},
    {"quant:", "bits", 2},
    {"quant:", "group", 0},
    {"kivi:", "bits", 2},
    {"kivi:", "group", 1},
    {"kivi:", "vgroup", 0},
    {"kivi:", "residual", 0},
    {"nf4:", "block", 1},
    {"nf4:", "dq", 0},
    {"int8:", "group", 0},
    {"int8:", "sym", 1},
};
// clang-format on

std::string error_of(const std::string& spec) {
  try {
    make_strategy(spec);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("strategy specs: every integer parameter is refused at INT64_MAX, INT64_MIN, 2^31 and below its minimum") {
  for (const auto& p : kParams) {
    const std::string base = p.base, key = p.key;
    std::vector<std::string> bad = {"-9223372036854775808", "99999999999999999999", "-99999999999999999999",
                                    std::to_string(p.lo - 1)};
    if (!p.seed) {
      bad.push_back("9223372036854775807");
      bad.push_back("2147483648");
      bad.push_back("4611686018427387904");  // 2^62
    }
    for (const auto& v : bad) {
      const std::string spec = base + key + "=" + v;
      INFO("spec: ", spec);
      const std::string e = error_of(spec);
      CHECK(e != "no error");
      CHECK(e.find('\n') == std::string::npos);
    }
  }
}

TEST_CASE("strategy specs: a range error names the parameter, its value and the range") {
  CHECK(error_of("h2o:budget=9223372036854775807") ==
        "strategy 'h2o:budget=9223372036854775807': budget=9223372036854775807 must be in [1, 2147483647]");
  CHECK(error_of("h2o:budget=64,sinks=9223372036854775807") ==
        "strategy 'h2o:budget=64,sinks=9223372036854775807': sinks=9223372036854775807 must be in [0, 2147483647]");
  CHECK(error_of("kivi:residual=4611686018427387904") ==
        "strategy 'kivi:residual=4611686018427387904': residual=4611686018427387904 must be in [0, 2147483647]");
  CHECK(error_of("streaming:budget=64,prefix=-1") ==
        "strategy 'streaming:budget=64,prefix=-1': prefix=-1 must be in [0, 1]");
  CHECK(error_of("random:budget=64,seed=-1") ==
        "strategy 'random:budget=64,seed=-1': seed=-1 must be in [0, 9223372036854775807]");
  CHECK(error_of("magicpig:dense_layers=-3") ==
        "strategy 'magicpig:dense_layers=-3': dense_layers holds -3, outside [0, 2147483647]");
  CHECK(error_of("magicpig:dense_layers=0,99999999999") ==
        "strategy 'magicpig:dense_layers=0,99999999999': dense_layers holds 99999999999, outside [0, 2147483647]");
}

TEST_CASE("strategy specs: the largest valid values are accepted, and a flag is 0 or 1 only") {
  CHECK(error_of("h2o:budget=2147483647") == "no error");
  CHECK(error_of("random:budget=64,seed=9223372036854775807") == "no error");
  CHECK(error_of("random:budget=64,seed=9223372036854775808") ==
        "strategy 'random:budget=64,seed=9223372036854775808': seed=9223372036854775808 must be in [0, "
        "9223372036854775807]");
  CHECK(error_of("kivi:residual=2147483616") == "no error");  // a multiple of group = 32 below 2^31
  // prefix=1 and prefix=01 are one configuration (resolved "1"); prefix=-1 or 2 is no configuration.
  CHECK(make_strategy("streaming:budget=64,prefix=01")->params().at("prefix") == "1");
  CHECK(error_of("streaming:budget=64,prefix=2") != "no error");
}

TEST_CASE("strategy specs: a '+' with no codec after it is refused") {
  CHECK(error_of("h2o:budget=16+") ==
        "'h2o:budget=16+': nothing after '+' (expected strategy+codec, e.g. h2o:budget=64+kivi)");
  CHECK(error_of("h2o:budget=16+ ") != "no error");
  CHECK(error_of("h2o:budget=16+kivi") == "no error");
}

TEST_CASE("errors: control characters and bytes that are not UTF-8 are escaped, so a message stays one readable line") {
  CHECK(std::string(UsageError("a\nb\rc\td\x01"
                               "e\x7f")
                        .what()) == "a\\nb\\rc\\td\\x01e\\x7f");
  CHECK(std::string(FormatError("caf\xc3\xa9").what()) == "caf\xc3\xa9");  // UTF-8 kept
  // Bytes that are not well-formed UTF-8 (RFC 3629, checked by hand): a lone 0xff, a truncated
  // 2-byte sequence, an overlong '/' (c0 af), a surrogate (ed a0 80), past U+10FFFF (f4 90 80 80);
  // a 4-byte emoji (f0 9f 98 80) and a 3-byte euro sign (e2 82 ac) are kept.
  CHECK(std::string(FormatError("'\xff\x01'").what()) == "'\\xff\\x01'");
  CHECK(std::string(FormatError("a\xc3").what()) == "a\\xc3");
  CHECK(std::string(FormatError("\xc0\xaf").what()) == "\\xc0\\xaf");
  CHECK(std::string(FormatError("\xed\xa0\x80").what()) == "\\xed\\xa0\\x80");
  CHECK(std::string(FormatError("\xf4\x90\x80\x80").what()) == "\\xf4\\x90\\x80\\x80");
  CHECK(std::string(FormatError("\xf0\x9f\x98\x80 \xe2\x82\xac").what()) == "\xf0\x9f\x98\x80 \xe2\x82\xac");
  const std::string e = error_of("h2o\n:budget=1");
  CHECK(e.find('\n') == std::string::npos);
  CHECK(e.find("h2o\\n") != std::string::npos);
}
