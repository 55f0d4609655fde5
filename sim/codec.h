// Storage codec of a strategy's slots (design.md §5 "quantization, composable with any eviction or
// merging strategy"). The engine stores every new token through its strategy's codec, and bytes are
// counted by it. Only the identity codec (fp16 storage, values kept exactly in float32) exists
// now; quant / kivi / nf4 come behind the same interface (issue 5).
#pragma once

#include <cstdint>
#include <string>

#include "sim/slot.h"

namespace kvsim {

class Codec {
 public:
  virtual ~Codec() = default;
  virtual std::string name() const = 0;
  // Appends token t with key k and value v [D] to the cache, as attention will see it.
  virtual void store(SlotCache& cache, int32_t t, const float* k, const float* v) const = 0;
  // Physical bytes of `cache` (payload at the real bit width, scales, residual windows, ...).
  virtual double bytes(const SlotCache& cache) const = 0;
};

// fp16 payload: 2 bytes per element of key and value, no metadata. Values stay exact (the trace
// holds the model's own numbers; rounding them would make `full` inexact).
class IdentityCodec final : public Codec {
 public:
  std::string name() const override { return "identity"; }
  void store(SlotCache& cache, int32_t t, const float* k, const float* v) const override {
    cache.append_exact(t, k, v);
  }
  double bytes(const SlotCache& cache) const override { return 2.0 * 2.0 * cache.D() * cache.size(); }
};

const Codec& identity_codec();

}  // namespace kvsim
