#include "sim/instance.h"

#include <string>

#include "sim/base/error.h"

namespace kvsim {

int64_t instances_per_layer(const Strategy& s, int64_t Hkv) { return s.layer_coupled() ? 1 : Hkv; }

InstanceContext make_context(const Strategy& s, const ModelShape& shape, int64_t layer, int64_t i, int64_t T,
                             int64_t P) {
  InstanceContext ctx;
  ctx.layer = layer, ctx.n_layers = shape.L;
  ctx.kv0 = s.layer_coupled() ? 0 : i;
  ctx.n_caches = s.layer_coupled() ? shape.Hkv : 1;
  ctx.T = T, ctx.P = P, ctx.D = shape.D, ctx.G = shape.G();
  return ctx;
}

void check_prefill(int64_t T, int64_t P) {
  if (P < 1 || P >= T)
    throw UsageError("prefill P = " + std::to_string(P) + " must satisfy 1 <= P < T = " + std::to_string(T));
}

void check_fits(const Strategy& s, const ModelShape& shape, int64_t T, int64_t P) {
  check_prefill(T, P);
  for (int64_t l = 0; l < shape.L; ++l)  // per-layer budgets (pyramidkv) fail here, not mid-run
    (void)s.make_state(make_context(s, shape, l, 0, T, P));
  (void)s.codec().make_state(shape.D, T);  // a codec group that does not fit D fails here, not in a thread
}

Instance::Instance(const Strategy& s, const InstanceContext& ctx) : strat_(s), ctx_(ctx) {
  caches_.reserve(static_cast<size_t>(ctx.n_caches));
  for (int64_t c = 0; c < ctx.n_caches; ++c) {
    caches_.emplace_back(ctx.D, ctx.P + 1);
    codec_.push_back(s.codec().make_state(ctx.D, ctx.T));
  }
  state_ = s.make_state(ctx);
  logit_.resize(caches_.size()), w_.resize(caches_.size()), wptr_.assign(caches_.size(), nullptr);
  o_hat_.assign(caches_.size(), std::vector<float>(static_cast<size_t>(ctx.G * ctx.D)));
}

void Instance::store(int64_t c, int64_t t, const float* k, const float* v) {
  codec_[c]->store(caches_[c], static_cast<int32_t>(t), k, v);
}

void Instance::prefill(const LayerView& lv) {
  KVSIM_ASSERT(!prefilled_);
  state_->prefill(caches_, lv, ctx_.P);
  prefilled_ = true;
}

void Instance::prepare_attention(int64_t c) {
  const size_t n = static_cast<size_t>(ctx_.G * caches_[c].size());
  logit_[c].resize(n), w_[c].resize(n);
  wptr_[c] = w_[c].data();
}

void Instance::attend(int64_t c, AttendSlotsFn fn, const float* q, int64_t q_stride, float* o) {
  prepare_attention(c);
  fn(q, q_stride, ctx_.G, ctx_.D, caches_[c].slots_view(), logit_[c].data(), w_[c].data(), o ? o : o_hat_[c].data());
}

void Instance::finish_step(int64_t t) { finish_step(t, wptr_); }

void Instance::finish_step(int64_t t, std::span<const float* const> attn) {
  KVSIM_ASSERT(prefilled_ && static_cast<int64_t>(attn.size()) == ctx_.n_caches);
  state_->observe(caches(), attn, t);
  state_->evict(caches_, t);
}

double Instance::bytes(int64_t c) const { return codec_[c]->bytes(caches_[c]) + state_->state_bytes(c); }

void Instance::prefill_from(const LayerView& lv) {
  for (int64_t c = 0; c < ctx_.n_caches; ++c)
    for (int64_t t = 0; t < ctx_.P; ++t) store(c, t, lv.k_head(ctx_.kv0 + c) + t * ctx_.D, lv.v_head(ctx_.kv0 + c) + t * ctx_.D);
  prefill(lv);
}

void Instance::store_from(const LayerView& lv, int64_t t) {
  for (int64_t c = 0; c < ctx_.n_caches; ++c)
    store(c, t, lv.k_head(ctx_.kv0 + c) + t * ctx_.D, lv.v_head(ctx_.kv0 + c) + t * ctx_.D);
}

void Instance::attend_from(const LayerView& lv, int64_t t, AttendSlotsFn fn) {
  for (int64_t c = 0; c < ctx_.n_caches; ++c)
    attend(c, fn, lv.q_head((ctx_.kv0 + c) * ctx_.G) + t * ctx_.D, lv.T * ctx_.D);
}

}  // namespace kvsim
