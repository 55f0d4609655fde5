#include "sim/instance.h"

#include <string>

#include "sim/base/error.h"

namespace kvsim {

int64_t instances_per_layer(const Strategy& s, int64_t Hkv) { return s.layer_coupled() ? 1 : Hkv; }

InstanceContext make_context(const Strategy& s, const ModelShape& shape, int64_t layer, int64_t i, int64_t T, int64_t P,
                             Protocol protocol, const std::vector<double>* plan) {
  InstanceContext ctx;
  ctx.layer = layer, ctx.n_layers = shape.L;
  KVSIM_ASSERT(!(s.layer_coupled() && s.per_query_head()));
  ctx.kv0 = s.layer_coupled() ? 0 : i;
  ctx.q0 = ctx.kv0 * shape.G();
  ctx.per_query_head = s.per_query_head();
  ctx.n_caches = s.layer_coupled() ? shape.Hkv : s.per_query_head() ? shape.G() : 1;
  ctx.T = T, ctx.P = P, ctx.D = shape.D, ctx.G = shape.G();
  ctx.protocol = protocol;
  ctx.plan = plan;
  return ctx;
}

void check_prefill(int64_t T, int64_t P) {
  if (P < 1 || P >= T)
    throw UsageError("prefill P = " + std::to_string(P) + " must satisfy 1 <= P < T = " + std::to_string(T));
}

void check_fits(const Strategy& s, const ModelShape& shape, int64_t T, int64_t P, Protocol protocol) {
  check_prefill(T, P);
  if (s.is_selector() && protocol != Protocol::sparse)
    throw UsageError("strategy '" + s.spec_text() +
                     "' is a query-aware selector: it runs under --protocol sparse, not " + protocol_name(protocol));
  if (!s.is_selector() && protocol == Protocol::sparse)
    throw UsageError("strategy '" + s.spec_text() +
                     "' evicts or merges: it runs under --protocol evict or prefill; --protocol sparse takes a "
                     "selector (oracle_topk, ...)");
  for (int64_t l = 0; l < shape.L; ++l)  // per-layer budgets (pyramidkv) fail here, not mid-run
    (void)s.make_state(make_context(s, shape, l, 0, T, P, protocol));
  (void)s.codec().make_state(shape.D, T);  // a codec group that does not fit D fails here, not in a thread
}

Instance::Instance(const Strategy& s, const InstanceContext& ctx) : strat_(s), ctx_(ctx) {
  caches_.reserve(static_cast<size_t>(ctx.n_caches));
  for (int64_t c = 0; c < ctx.n_caches; ++c) {
    caches_.emplace_back(ctx.D, ctx.P + 1);
    codec_.push_back(s.codec().make_state(ctx.D, ctx.T));
  }
  if (ctx.per_query_head) {  // one state per cache, each for its own query head
    KVSIM_ASSERT(!s.is_selector());
    for (int64_t c = 0; c < ctx.n_caches; ++c) {
      InstanceContext one = ctx;
      one.q0 = ctx.q_head(c, 0), one.n_caches = 1;
      states_.push_back(s.make_state(one));
    }
  } else {
    states_.push_back(s.make_state(ctx));
  }
  logit_.resize(caches_.size()), w_.resize(caches_.size()), wptr_.assign(caches_.size(), nullptr);
  o_hat_.assign(caches_.size(), std::vector<float>(static_cast<size_t>(ctx.rows() * ctx.D)));
  if (sparse()) {
    const auto per_cache = [&](auto v) { return decltype(v)(static_cast<size_t>(ctx.rows())); };
    sel_.assign(caches_.size(), per_cache(std::vector<Selection>{}));
    read_.assign(caches_.size(), per_cache(std::vector<SlotCache>{}));
    read_logit_.assign(caches_.size(), per_cache(std::vector<std::vector<double>>{}));
    read_w_.assign(caches_.size(), per_cache(std::vector<std::vector<float>>{}));
  }
}

void Instance::store(int64_t c, int64_t t, const float* k, const float* v) {
  codec_[c]->store(caches_[c], static_cast<int32_t>(t), k, v);
}

std::span<SlotCache> Instance::caches_of(size_t i) {
  return ctx_.per_query_head ? std::span<SlotCache>(&caches_[i], 1) : std::span<SlotCache>(caches_);
}

void Instance::prefill(const LayerView& lv) {
  KVSIM_ASSERT(!prefilled_);
  for (size_t i = 0; i < states_.size(); ++i) states_[i]->prefill(caches_of(i), lv, ctx_.P);
  prefilled_ = true;
}

void Instance::prepare_attention(int64_t c) {
  const size_t n = static_cast<size_t>(ctx_.rows() * caches_[c].size());
  logit_[c].resize(n), w_[c].resize(n);
  wptr_[c] = w_[c].data();
}

void Instance::attend(int64_t c, int64_t t, AttendSlotsFn fn, const float* q, int64_t q_stride, float* o) {
  float* out = o ? o : o_hat_[c].data();
  if (!sparse()) {
    prepare_attention(c);
    fn(q, q_stride, ctx_.rows(), ctx_.D, caches_[c].slots_view(), logit_[c].data(), w_[c].data(), out);
    return;
  }
  states_[0]->select(caches_[c], c, q, q_stride, t, sel_[c]);
  for (int64_t g = 0; g < ctx_.rows(); ++g) {
    const Selection& sel = sel_[c][g];
    const SlotCache& src = sel.from ? *sel.from : caches_[c];
    KVSIM_ASSERT(!sel.slots.empty() && src.size() == caches_[c].size());
    KVSIM_ASSERT(sel.bias.empty() || sel.bias.size() == sel.slots.size());
    SlotCache& r = read_[c][g];
    const int64_t n = static_cast<int64_t>(sel.slots.size());
    r.assign_subset(src, sel.slots.data(), n);
    for (int64_t s = 0; s < static_cast<int64_t>(sel.bias.size()); ++s) r.set_bias(s, r.bias(s) + sel.bias[s]);
    read_logit_[c][g].resize(sel.slots.size()), read_w_[c][g].resize(sel.slots.size());
    fn(q + g * q_stride, q_stride, 1, ctx_.D, r.slots_view(), read_logit_[c][g].data(), read_w_[c][g].data(),
       out + g * ctx_.D);
  }
}

const double* Instance::logit(int64_t c, int64_t g) const {
  return sparse() ? read_logit_[c][g].data() : logit_[c].data() + g * caches_[c].size();
}

const float* Instance::weights(int64_t c, int64_t g) const {
  return sparse() ? read_w_[c][g].data() : w_[c].data() + g * caches_[c].size();
}

void Instance::finish_step(int64_t t) { finish_step(t, wptr_); }

std::vector<std::string> Instance::degeneracies() const {
  std::vector<std::string> out;
  for (int64_t c = 0; c < ctx_.n_caches; ++c) {
    const StrategyState& st = ctx_.per_query_head ? *states_[c] : *states_[0];
    const int64_t local = ctx_.per_query_head ? 0 : c;
    if (!sparse())  // under protocol sparse nothing is dropped by design
      for (auto& d : st.degeneracies(caches_[c], local)) out.push_back(strat_.name() + ": " + d);
    for (auto& d : codec_[c]->degeneracies(caches_[c])) out.push_back(std::move(d));
  }
  return out;
}

void Instance::finish_step(int64_t t, std::span<const float* const> attn) {
  KVSIM_ASSERT(prefilled_ && static_cast<int64_t>(attn.size()) == ctx_.n_caches);
  if (ctx_.protocol != Protocol::evict) return;  // prefill: the cut was the only one; sparse: none
  for (size_t i = 0; i < states_.size(); ++i) {
    const std::span<SlotCache> cs = caches_of(i);
    const size_t first = ctx_.per_query_head ? i : 0;
    states_[i]->observe(cs, attn.subspan(first, cs.size()), t);
    states_[i]->evict(cs, t);
  }
}

double Instance::bytes(int64_t c) const {
  const double held = codec_[c]->bytes(caches_[c]);
  const StrategyState& st = ctx_.per_query_head ? *states_[c] : *states_[0];
  const int64_t local = ctx_.per_query_head ? 0 : c;
  if (ctx_.protocol == Protocol::prefill && prefilled_) return held + st.frozen_state_bytes(local);
  return held + st.state_bytes(local);
}

double Instance::kv_bytes(int64_t c) const {
  if (!ctx_.per_query_head) return bytes(c);
  double b = 0;
  for (int64_t i = 0; i < ctx_.n_caches; ++i) b += bytes(i);
  return b;
}

double Instance::kv_read_bytes(int64_t c) const {
  if (!ctx_.per_query_head) return read_bytes(c);
  double b = 0;
  for (int64_t i = 0; i < ctx_.n_caches; ++i) b += read_bytes(i);
  return b;
}

double Instance::read_bytes(int64_t c) const {
  const double held = codec_[c]->bytes(caches_[c]);
  if (!sparse()) return held;
  // The union of the G query heads' selections is loaded once per KV head; each slot read costs
  // its share of what the codec holds (exact for fp16 slots, the average for quantized ones).
  std::vector<uint8_t> read(static_cast<size_t>(caches_[c].size()), 0);
  int64_t n_read = 0;
  for (const Selection& sel : sel_[c])
    for (int64_t i = 0; i < sel.n_loaded(); ++i)
      if (const int32_t s = sel.slots[i]; !read[s]) read[s] = 1, ++n_read;
  const double slots = held * static_cast<double>(n_read) / static_cast<double>(caches_[c].size());
  return slots + states_[0]->metadata_read_bytes(caches_[c], c, sel_[c]);
}

void Instance::prefill_from(const LayerView& lv) {
  for (int64_t c = 0; c < ctx_.n_caches; ++c) codec_[c]->calibrate(lv.k, lv.v, lv.Hkv, lv.T, ctx_.kv_of(c), ctx_.P);
  for (int64_t c = 0; c < ctx_.n_caches; ++c)
    for (int64_t t = 0; t < ctx_.P; ++t)
      store(c, t, lv.k_head(ctx_.kv_of(c)) + t * ctx_.D, lv.v_head(ctx_.kv_of(c)) + t * ctx_.D);
  prefill(lv);
}

void Instance::store_from(const LayerView& lv, int64_t t) {
  for (int64_t c = 0; c < ctx_.n_caches; ++c)
    store(c, t, lv.k_head(ctx_.kv_of(c)) + t * ctx_.D, lv.v_head(ctx_.kv_of(c)) + t * ctx_.D);
}

void Instance::attend_from(const LayerView& lv, int64_t t, AttendSlotsFn fn) {
  for (int64_t c = 0; c < ctx_.n_caches; ++c)
    attend(c, t, fn, lv.q_head(ctx_.q_head(c, 0)) + t * ctx_.D, lv.T * ctx_.D);
}

}  // namespace kvsim
