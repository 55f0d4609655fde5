// The one instance driver (design.md §3). An instance is one (layer, KV head), or one whole layer
// for a layer-coupled strategy (tova), which then manages the Hkv caches of the layer together; under
// gqa=none (Strategy::per_query_head) a (layer, KV head) with G caches, one per query head, each
// with its own strategy state, all holding the same KV head's tokens. It
// owns those caches, their codec states and the strategy state, and runs the replay protocol
//   prefill: store tokens 0..P-1 through the codec -> strategy.prefill
//   step t:  store token t through the codec -> attend (G query heads per cache) -> [measure]
//            -> observe -> evict
// under one of three protocols (sim/strategies/strategy.h, Protocol): evict (A, as above), prefill
// (B: the cut at prefill is the only one; no observe or evict after it) and sparse (C: a selector
// picks the slots each query head reads; nothing is evicted).
// Every caller drives this class and nothing else: the offline replay (sim/replay.cpp, with the
// metrics as its measuring hook), the live model runner (traces/model/strategy_cache.cpp, whose
// tokens and queries arrive one KV head at a time) and the tests (tests/sim_test_util.h).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "sim/kernels/kernels.h"
#include "sim/strategies/slot.h"
#include "sim/strategies/strategy.h"

namespace kvsim {

// The dimensions of a model or trace that an instance's context needs.
struct ModelShape {
  int64_t L = 1, H = 1, Hkv = 1, D = 0;
  int64_t G() const { return H / Hkv; }
};

// Instances of `s` per layer: 1 for a layer-coupled strategy, else Hkv.
int64_t instances_per_layer(const Strategy& s, int64_t Hkv);
// The context of instance `i` (< instances_per_layer) of `layer`, on a sequence of T tokens with
// prefill P (seed 0), reading the sequence's cross-layer plan `plan` (InstanceContext::plan).
InstanceContext make_context(const Strategy& s, const ModelShape& shape, int64_t layer, int64_t i, int64_t T, int64_t P,
                             Protocol protocol = Protocol::evict, const std::vector<double>* plan = nullptr);
// UsageError unless 1 <= P < T.
void check_prefill(int64_t T, int64_t P);
// UsageError when `s` cannot run on T tokens with prefill P: P out of range, a budget that does not
// fit some layer (per-layer budgets), a codec group that does not divide D, a selector outside
// protocol sparse or a cache strategy inside it. Call before any work.
void check_fits(const Strategy& s, const ModelShape& shape, int64_t T, int64_t P, Protocol protocol = Protocol::evict);
// design.md §4 `ratio`: bytes over those of an fp16 full cache of t + 1 tokens (key and value).
inline double cache_ratio(double bytes, int64_t D, int64_t t) {
  return bytes / (4.0 * static_cast<double>(D) * static_cast<double>(t + 1));
}

class Instance {
 public:
  Instance(const Strategy& s, const InstanceContext& ctx);

  const InstanceContext& context() const { return ctx_; }
  int64_t n_caches() const { return ctx_.n_caches; }
  int64_t kv0() const { return ctx_.kv0; }
  // Query heads attending over each cache (G, or 1 under gqa=none), the KV head cache c holds and
  // the query head of its row g (InstanceContext).
  int64_t rows() const { return ctx_.rows(); }
  int64_t kv_of(int64_t c) const { return ctx_.kv_of(c); }
  int64_t q_head(int64_t c, int64_t g) const { return ctx_.q_head(c, g); }
  bool prefilled() const { return prefilled_; }
  const SlotCache& cache(int64_t c) const { return caches_[c]; }
  std::span<const SlotCache> caches() const { return {caches_.data(), caches_.size()}; }

  // Token t of cache c (KV head kv0 + c) enters through the codec: key k, value v [D].
  void store(int64_t c, int64_t t, const float* k, const float* v);
  // Every cache holds tokens 0..P-1: the strategy compresses to its budget. `lv` is the layer's
  // plain data as strategy.h describes (the prompt's q, k, v; k_norm, entropy, colsums).
  void prefill(const LayerView& lv);

  // Attention of the rows() query heads of cache c at step t (design.md §3 step b): rows g of q at
  // q + g * q_stride; o_hat [rows, D] into `o` (the instance's own buffer when null). Under protocol
  // sparse each query head attends over the slots its selector picked (attended(c, g)).
  void attend(int64_t c, int64_t t, AttendSlotsFn fn, const float* q, int64_t q_stride, float* o = nullptr);
  // For attention computed elsewhere (the cuda batch, protocols evict and prefill): sizes cache c's
  // buffers to its slots; the caller fills logit(c), weights(c) and o_hat(c).
  void prepare_attention(int64_t c);
  double* logit(int64_t c) { return logit_[c].data(); }
  float* weights(int64_t c) { return w_[c].data(); }
  float* o_hat(int64_t c) { return o_hat_[c].data(); }
  // What query head g of cache c attended over at this step (the cache itself, or under protocol
  // sparse the slots it read, in selection order) with its logits and weights [n_g] and output [D].
  const SlotCache& attended(int64_t c, int64_t g) const { return sparse() ? read_[c][g] : caches_[c]; }
  const double* logit(int64_t c, int64_t g) const;
  const float* weights(int64_t c, int64_t g) const;
  const float* o_hat(int64_t c) const { return o_hat_[c].data(); }  // [rows, D]
  const float* weights(int64_t c) const { return w_[c].data(); }    // [rows, n] (protocols evict, prefill)

  // The strategy observes this step's weights over its slots (design.md §3 step c), then evicts
  // back to its budget (step d). The second form observes weights given by the caller.
  void finish_step(int64_t t);
  void finish_step(int64_t t, std::span<const float* const> attn);

  // Physical bytes of cache c now: the codec's payload and metadata plus the strategy's state (its
  // frozen part after the cut under protocol prefill; the selector's metadata under sparse).
  double bytes(int64_t c) const;
  // Bytes this step's attention read from cache c: everything the codec holds (evict, prefill), or
  // the selector's metadata and the selected slots (sparse).
  double read_bytes(int64_t c) const;
  // What the KV head of cache c holds and reads: bytes(c) and read_bytes(c), or under gqa=none the
  // sum over the G caches of that KV head (one per query head). The metrics report these.
  double kv_bytes(int64_t c) const;
  double kv_read_bytes(int64_t c) const;

  // The protocol on data laid out as a LayerView (offline replay, tests): cache c stores KV head
  // kv_of(c), query head h = q_head(c, g) attends with row t of lv.q_head(h).
  void prefill_from(const LayerView& lv);
  void store_from(const LayerView& lv, int64_t t);
  void attend_from(const LayerView& lv, int64_t t, AttendSlotsFn fn);
  bool sparse() const { return ctx_.protocol == Protocol::sparse; }
  // After the run, per cache: the strategy's degeneracies (protocols evict and prefill; prefixed
  // with its name) and the codec's, one line each (StrategyState/CodecState::degeneracies).
  std::vector<std::string> degeneracies() const;
  // store -> attend -> measure(*this, t) -> observe -> evict.
  template <class Measure>
  void step(const LayerView& lv, int64_t t, AttendSlotsFn fn, Measure&& measure) {
    store_from(lv, t);
    attend_from(lv, t, fn);
    measure(static_cast<const Instance&>(*this), t);
    finish_step(t);
  }

 private:
  const Strategy& strat_;
  InstanceContext ctx_;
  std::vector<SlotCache> caches_;                   // [n_caches]
  std::vector<std::unique_ptr<CodecState>> codec_;  // [n_caches]
  // One strategy state for all caches, or under gqa=none one per cache (caches_of(i) are its).
  std::vector<std::unique_ptr<StrategyState>> states_;
  std::span<SlotCache> caches_of(size_t i);
  std::vector<std::vector<double>> logit_;
  std::vector<std::vector<float>> w_, o_hat_;
  std::vector<const float*> wptr_;
  // Protocol sparse, per cache and query head: the selection, the slots read and their attention.
  std::vector<std::vector<Selection>> sel_;
  std::vector<std::vector<SlotCache>> read_;
  std::vector<std::vector<std::vector<double>>> read_logit_;
  std::vector<std::vector<std::vector<float>>> read_w_;
  bool prefilled_ = false;
};

}  // namespace kvsim
