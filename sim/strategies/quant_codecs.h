// Storage codecs for cache slots (design.md §5): quant, kivi, nf4. A codec composes with any
// eviction or merging strategy (`h2o:budget=256+kivi:bits=2`); alone (`kivi:bits=2`) it composes
// with `full`. Per cache, a CodecState keeps the newest tokens in fp16 until a quantization group
// is complete, then replaces their slots' keys and values with the dequantized ones (so attention
// and every metric see the quantization error) and marks them inexact.
//
// Byte accounting (`bytes`, per cache, keys and values): fp16 slots (the residual window and
// merged slots) 2 bytes per element; quantized slots the payload at its bit width plus their
// share of the group's parameters (fp16 scale + fp16 min per group for quant and kivi, fp32 absmax
// per 64-block for nf4; with dq=1, once 256 blocks have formed, an 8-bit absmax code per block plus
// an fp32 scale and an fp32 mean per 256 blocks). A group whose members were partly evicted is
// counted by its remaining members' share. kivi's residual rule (`residual_mode`) and nf4's double
// quantization are described in sim/strategies/STRATEGIES.md, "Storage codecs".
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sim/base/spec.h"
#include "sim/strategies/codec.h"

namespace kvsim {

// Builds the codec of a spec (`quant:bits=4,axis=channel`, `kivi:bits=2`, `nf4:dq=1`), or throws
// UsageError naming the valid codecs / parameters.
std::unique_ptr<Codec> make_codec(const StrategySpec& spec, std::map<std::string, std::string>* resolved = nullptr);
bool is_codec_name(const std::string& name);
std::vector<std::string> codec_names();

}  // namespace kvsim
