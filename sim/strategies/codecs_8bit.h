// The 8-bit codecs serving engines ship (methods.md §4.1, §4.2): fp8 (e4m3fn or e5m2 with a float32
// scale per tensor, head or token, or none) and int8 (symmetric, an fp16 scale per token or per
// group of channels). Every token is quantized as it arrives (there is no residual window); the
// slot holds the dequantized key and value. Bytes (per cache, keys and values): 1 per element,
// plus each scale at its width: fp8 4 per token (scale=token), 4 per cache (scale=head), 4 / Hkv
// per cache (scale=tensor|dynamic: one scale per layer, shared by its Hkv caches), none (scale=one);
// int8 2 per group of each token; merged slots in fp16. sim/strategies/STRATEGIES.md, "Storage
// codecs", gives the rules and their sources.
#pragma once

#include <memory>

#include "sim/base/spec.h"
#include "sim/strategies/codec.h"

namespace kvsim {

// From a ParamReader on an `fp8` / `int8` spec (make_codec calls them and finishes the reader).
std::unique_ptr<Codec> make_fp8_codec(ParamReader& p);
std::unique_ptr<Codec> make_int8_codec(ParamReader& p);

}  // namespace kvsim
