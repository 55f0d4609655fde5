// The native model runner: a Llama-family forward pass on the CPU (ref or omp kernels) with a
// per-(layer, KV head) KvCache, or on the GPU (cuda: cuda/forward_runner.h, a full KV cache on the
// device). forward() runs a block of tokens at the next positions: the whole
// prompt at once (prefill) or one token at a time (decode); both go through the same code.
// A LayerTap sees each layer's tensors while they are live, which is how the recorder streams
// q, k, v (and q_pre, k_pre, o) to a trace without buffering it. On cuda the tap runs on a writer
// thread, in layer order, possibly after forward() returned (the GPU runs ahead while the trace is
// written); wait_taps() is the point after which every tap has run.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "sim/base/kv_cache.h"
#include "sim/kernels/backend.h"
#include "traces/model/model.h"

namespace kvsim::cuda {
class DecoderRunner;
}

namespace kvsim::model {

// One layer's tensors for the T tokens of a forward call, token-major.
struct LayerTensors {
  int64_t layer = 0, pos0 = 0, T = 0;
  const float* q_pre = nullptr;  // [T, H, D] before RoPE
  const float* k_pre = nullptr;  // [T, Hkv, D]
  const float* q = nullptr;      // [T, H, D] after RoPE, as attention uses it (unscaled)
  const float* k = nullptr;      // [T, Hkv, D] after RoPE, as cached
  const float* v = nullptr;      // [T, Hkv, D]
  const float* o = nullptr;      // [T, H, D] attention output (before the output projection)
};
using LayerTap = std::function<void(const LayerTensors&)>;
// Which optional tensors a tap reads (the cuda runner copies only those off the device).
struct TapKinds {
  bool pre = true;     // q_pre, k_pre
  bool output = true;  // o
};

// --backend for the runner: "cpu" picks omp when built with OpenMP, else ref; "auto" picks cuda when
// a device can run it, else as "cpu"; "ref", "omp" and "cuda" as named, NotCompiled (one line, exit
// 2) when not built or, for cuda, without a device.
Backend parse_runner_backend(const std::string& s);

class Runner {
 public:
  // The model must outlive the runner. caches: empty for exact full caches; a strategy's factory
  // (kvsim ppl) runs on ref and omp only, cuda refuses it (NotCompiled).
  Runner(const Model& model, Backend backend, KvCacheFactory caches = {});
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  // Empties the caches; the next token is at position 0.
  void reset();
  // Starts a sequence from a cached prefix of n tokens (`kvsim prefix --model`): empties the caches,
  // appends keys[l * Hkv + g] and values[l * Hkv + g] ([n, D] each, as cached: keys after RoPE) to
  // the cache of (layer l, KV head g), and moves pos() to n. NotCompiled on cuda.
  void load_prefix(int64_t n, const std::vector<std::vector<float>>& keys,
                   const std::vector<std::vector<float>>& values);
  // Runs tokens at positions pos() .. pos()+T-1 and appends them to the caches. Returns the logits
  // [vocab] of the last token, or [T, vocab] when all_logits. Throws UsageError when the tokens
  // would run past the context or an id is outside the vocabulary.
  const float* forward(const int32_t* tokens, int64_t T, bool all_logits = false, const LayerTap& tap = {},
                       TapKinds kinds = {});
  // Blocks until every tap handed out so far has run; rethrows a tap's exception (cuda; on the
  // CPU the tap runs inside forward() and this returns at once).
  void wait_taps();
  int64_t pos() const { return pos_; }
  const Model& model() const { return model_; }
  Backend backend() const { return backend_; }
  // The host cache of (layer, KV head); NotCompiled on cuda, whose cache lives on the device.
  KvCache& cache(int64_t layer, int64_t kv_head);

 private:
  void check_tokens(const int32_t* tokens, int64_t T) const;
  void ensure_buffers(int64_t T);
  const Model& model_;
  Backend backend_;
  std::vector<std::unique_ptr<KvCache>> caches_;  // [L * Hkv]
  int64_t pos_ = 0;
  int64_t cap_ = 0;
  // activations for up to cap_ tokens
  std::vector<float> x_, xb_, q_, k_, v_, q_pre_, k_pre_, att_, hb_, hb2_, logits_, kh_, vh_;
  std::vector<KvView> views_;
  std::unique_ptr<cuda::DecoderRunner> gpu_;  // backend cuda
};

}  // namespace kvsim::model
