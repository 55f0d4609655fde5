// kvsim capacity's arithmetic (tools/capacity.h) against hand computation and published parameter
// counts, and the memory wall's growing cache (traces/model/memory_wall.h) against the formula.
#include <doctest/doctest.h>

#include <cmath>

#include "sim/base/error.h"
#include "tools/capacity.h"
#include "traces/model/memory_wall.h"
#include "traces/synth.h"

using namespace kvsim;
using namespace kvsim::tools;

TEST_CASE("capacity: KV bytes per token of the named shapes, by hand") {
  // 2 (K, V) x L x Hkv x D x 2 bytes (fp16)
  CHECK(kv_bytes_per_token(32, 32, 128) == 524288);  // llama2-7b: 512 KiB per token
  CHECK(kv_bytes_per_token(32, 8, 128) == 131072);   // llama3-8b: GQA, 4x less
  CHECK(kv_bytes_per_token(28, 4, 128) == 57344);    // qwen2.5-7b
  CHECK(kv_bytes_per_token(5, 4, 8, 4) == 1280);     // stories260K in float32
}

TEST_CASE("capacity: parameter counts of the named shapes equal the published ones") {
  // Published totals (the models' safetensors metadata), independent of the formula.
  CHECK(parameter_count(config_of_shape(traces::find_synth_shape("llama2-7b"))) == 6738415616LL);
  CHECK(parameter_count(config_of_shape(traces::find_synth_shape("llama3-8b"))) == 8030261248LL);
  CHECK(parameter_count(config_of_shape(traces::find_synth_shape("mistral-7b"))) == 7241732096LL);
  CHECK(parameter_count(config_of_shape(traces::find_synth_shape("qwen2.5-7b"))) == 7615616512LL);
  // stories260K, its llama2.c header: dim 64, hidden 172, 5 layers, 8 heads, 4 KV heads, vocab 512,
  // tied: 512*64 + 5*(2*64 + 64*64 + 2*64*32 + 64*64 + 3*64*172) + 64
  CHECK(parameter_count(config_of_shape(traces::find_synth_shape("stories260k"))) ==
        512 * 64 + 5 * (2 * 64 + 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 172) + 64);
}

TEST_CASE("capacity: longest context and largest batch, Llama-2-7B on 24 GiB") {
  const double avail = 24.0 * 1024 * 1024 * 1024 - 6738415616.0 * 2;  // bf16 weights
  CHECK(avail == 12292972544.0);
  CHECK(max_context(avail, 524288, 1) == 23446);            // 23,446.7
  CHECK(max_context(avail, 524288, 4) == 5861);             // 5,861.7
  CHECK(max_batch(avail, 524288, 4096) == 5);               // 5.72
  CHECK(max_context(avail, 524288 * 0.28125, 1) == 83367);  // nf4: 4.5 bits of 16: 12,292,972,544 / 147,456 = 83,367.06
  CHECK(max_context(-1.0, 524288, 1) == 0);
  CHECK(max_batch(0.0, 524288, 4096) == 0);
}

TEST_CASE("capacity: sizes") {
  CHECK(parse_size("24GiB", "--memory") == 25769803776LL);
  CHECK(parse_size("24 gib", "--memory") == 25769803776LL);
  CHECK(parse_size("1.5KiB", "--memory") == 1536);
  CHECK(parse_size("512MB", "--memory") == 512000000);
  CHECK(parse_size("4M", "--memory") == 4194304);
  CHECK(parse_size("100", "--memory") == 100);
  CHECK(parse_size("0", "--memory") == 0);
  CHECK_THROWS_AS(parse_size("abc", "--memory"), UsageError);
  CHECK_THROWS_AS(parse_size("-1GiB", "--memory"), UsageError);
  CHECK_THROWS_AS(parse_size("12XB", "--memory"), UsageError);
  CHECK_THROWS_AS(parse_size("1e30", "--memory"), UsageError);
  CHECK_THROWS_AS(parse_size("nan", "--memory"), UsageError);
  CHECK(weight_dtype_bytes("nf4") == 0.5625);
  CHECK_THROWS_AS(weight_dtype_bytes("fp8"), UsageError);
}

TEST_CASE("capacity: the wall's bytes per token and its page-rounded prediction, by hand") {
  const auto c = config_of_shape(traces::find_synth_shape("stories260k"));
  CHECK(model::wall_bytes_per_token(c) == 5 * 4 * (2 * 8 * 4 + 8));  // 1440
  // 20 caches, each K and V 32 bytes per token (128 tokens a page), positions 8 (512 a page). With
  // 4 MiB = 1024 pages beyond one token: n tokens need 40 (ceil(n/128) - 1) + 20 (ceil(n/512) - 1) new
  // pages; n = 3072 needs 40*23 + 20*5 = 1020, n = 3073 needs 40*24 + 20*6 = 1080.
  CHECK(model::wall_page_tokens(c, 4 << 20) == 3072);
  CHECK(1 + (4 << 20) / model::wall_bytes_per_token(c) == 2913);  // the formula without pages
  // 2 MiB = 512 pages: n = 1536 needs 40*11 + 20*2 = 480; n = 1537 needs 40*12 + 20*3 = 540
  CHECK(model::wall_page_tokens(c, 2 << 20) == 1536);
  CHECK(model::wall_page_tokens(c, 4096) == 128);  // one page: none can grow, the first pages hold 128 tokens
}
