// A Llama-family decoder on the GPU: weights uploaded once, activations and a full KV cache
// ([Hkv, seq_len, D] per layer) on the device, the same forward pass as traces/model/runner.cpp
// with the ops of cuda/forward_ops.h. A plain C++ header (pimpl): traces/model/runner.cpp drives it
// behind Backend::cuda without seeing CUDA types. Without CUDA the constructor throws NotCompiled.
//
// Recording: with a tap, each layer's q, k, v, q_pre, k_pre, o are copied device-to-host on a
// second stream into a ring of pinned buffers, and a writer thread hands them to the tap in layer
// order, so the trace writing overlaps the forward pass of the next layers and blocks. The tap
// therefore runs on the writer thread, possibly after forward() has returned; wait_taps() blocks
// until every tap so far has run (and rethrows the first exception a tap threw).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "sim/base/rope.h"

namespace kvsim::cuda {

struct DecoderDims {
  int64_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t vocab_size = 0, seq_len = 0;
  double rope_theta = 10000.0;
  RopeStyle rope_style = RopeStyle::interleaved;
  float norm_eps = 1e-5f;
};

// Host pointers to one layer's weights (traces/model/model.h shapes); biases may be nullptr.
struct DecoderLayerHost {
  const float *rms_att = nullptr, *wq = nullptr, *wk = nullptr, *wv = nullptr;
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr, *wo = nullptr;
  const float *rms_ffn = nullptr, *w1 = nullptr, *w2 = nullptr, *w3 = nullptr;
};

struct DecoderHost {
  DecoderDims dims;
  const float* embedding = nullptr;   // [vocab, dim]
  const float* rms_final = nullptr;   // [dim]
  const float* classifier = nullptr;  // [vocab, dim]
  const float* inv_freq = nullptr;    // [D/2] or nullptr
  std::vector<DecoderLayerHost> layers;
};

// One layer's tensors of a forward call in pinned host memory, token-major (as the CPU runner's
// LayerTensors); q_pre, k_pre, o are nullptr unless asked for.
struct LayerHostTensors {
  int64_t layer = 0, pos0 = 0, T = 0;
  const float *q_pre = nullptr, *k_pre = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;
};
using HostTap = std::function<void(const LayerHostTensors&)>;

struct TapKinds {
  bool pre = true;     // q_pre, k_pre
  bool output = true;  // o
};

class DecoderRunner {
 public:
  explicit DecoderRunner(const DecoderHost& model);  // uploads the weights; throws without a device
  ~DecoderRunner();                                  // waits for pending taps
  DecoderRunner(const DecoderRunner&) = delete;
  DecoderRunner& operator=(const DecoderRunner&) = delete;

  // Empties the cache (waits for pending taps first).
  void reset();
  // Tokens at positions pos() .. pos()+T-1; host logits of the last token, or [T, vocab] when
  // all_logits (valid until the next call). The caller has checked ids and the context length.
  const float* forward(const int32_t* tokens, int64_t T, bool all_logits, const HostTap& tap = {}, TapKinds kinds = {});
  // Blocks until all taps handed out so far have run; rethrows a tap's exception.
  void wait_taps();
  int64_t pos() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvsim::cuda
