// Storage codec of a strategy's slots (design.md §5 "quantization, composable with any eviction or
// merging strategy"). The engine stores every new token through its strategy's codec, and bytes are
// counted by it: the identity codec here (fp16 storage, values kept exactly in float32), and
// quant / kivi / nf4 in sim/strategies/quant_codecs.h, fp8 / int8 in sim/strategies/codecs_8bit.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sim/strategies/slot.h"

namespace kvsim {

// Per-cache state of a codec: which tokens are still in full precision, which were quantized.
class CodecState {
 public:
  virtual ~CodecState() = default;
  // Appends token t with key k and value v [D] to the cache, as attention will see it.
  virtual void store(SlotCache& cache, int32_t t, const float* k, const float* v) = 0;
  // Physical bytes of `cache` (payload at the real bit width, scales, residual windows, ...).
  virtual double bytes(const SlotCache& cache) const = 0;
  // Before token 0 is stored, where the engine holds the layer's prompt (the offline replay,
  // Instance::prefill_from): k and v of the whole layer, this cache's KV head kv; a codec may read
  // positions < P only. Codecs whose scales come from the prompt (fp8 scale=dynamic|tensor|head)
  // set them here and refuse to store without it; the others ignore it.
  virtual void calibrate(const float* k,  // [Hkv, T, D]
                         const float* v,  // [Hkv, T, D]
                         int64_t Hkv, int64_t T, int64_t kv, int64_t P) {
    (void)k, (void)v, (void)Hkv, (void)T, (void)kv, (void)P;
  }
  // After a replay: one line per way the codec degenerated on this cache, worded the same for every
  // cache so that the replay can count them ("kivi: no keys were ever quantized ..."); empty: none.
  virtual std::vector<std::string> degeneracies(const SlotCache& cache) const {
    (void)cache;
    return {};
  }
};

class Codec {
 public:
  virtual ~Codec() = default;
  virtual std::string name() const = 0;
  // State for one cache of head dim D in a sequence of T tokens. Throws UsageError when the
  // codec's parameters do not fit D (a group that does not divide it).
  virtual std::unique_ptr<CodecState> make_state(int64_t D, int64_t T) const = 0;
};

// fp16 payload: 2 bytes per element of key and value, no metadata. Values stay exact (the trace
// holds the model's own numbers; rounding them would make `full` inexact).
class IdentityCodecState final : public CodecState {
 public:
  void store(SlotCache& cache, int32_t t, const float* k, const float* v) override { cache.append_exact(t, k, v); }
  double bytes(const SlotCache& cache) const override { return 2.0 * 2.0 * cache.D() * cache.size(); }
};

class IdentityCodec final : public Codec {
 public:
  std::string name() const override { return "identity"; }
  std::unique_ptr<CodecState> make_state(int64_t, int64_t) const override {
    return std::make_unique<IdentityCodecState>();
  }
};

const Codec& identity_codec();

}  // namespace kvsim
