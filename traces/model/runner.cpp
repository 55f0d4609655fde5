#include "traces/model/runner.h"

#include <algorithm>
#include <cstring>

#include "cuda/device.h"
#include "cuda/forward_runner.h"
#include "sim/base/error.h"
#include "sim/kernels/kernels.h"

namespace kvsim::model {

namespace {

template <typename V>
void grow(V& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

const float* data_or_null(const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }

// The model as host pointers for the GPU decoder, which uploads them once.
cuda::DecoderHost decoder_host(const Model& m) {
  const ModelConfig& c = m.config;
  cuda::DecoderHost h;
  h.dims.dim = c.dim, h.dims.hidden_dim = c.hidden_dim, h.dims.n_layers = c.n_layers;
  h.dims.n_heads = c.n_heads, h.dims.n_kv_heads = c.n_kv_heads, h.dims.head_dim = c.head_dim;
  h.dims.vocab_size = c.vocab_size, h.dims.seq_len = c.seq_len;
  h.dims.rope_theta = c.rope_theta, h.dims.rope_style = c.rope_style, h.dims.norm_eps = c.norm_eps;
  h.embedding = m.embedding.data();
  h.rms_final = m.rms_final.data();
  h.classifier = m.classifier();
  h.inv_freq = data_or_null(c.inv_freq);
  for (const LayerWeights& w : m.layers) {
    cuda::DecoderLayerHost l;
    l.rms_att = w.rms_att.data(), l.wq = w.wq.data(), l.wk = w.wk.data(), l.wv = w.wv.data();
    l.bq = data_or_null(w.bq), l.bk = data_or_null(w.bk), l.bv = data_or_null(w.bv);
    l.wo = w.wo.data(), l.rms_ffn = w.rms_ffn.data();
    l.w1 = w.w1.data(), l.w2 = w.w2.data(), l.w3 = w.w3.data();
    h.layers.push_back(l);
  }
  return h;
}

// The CPU runner's LayerTap on the GPU decoder's pinned host tensors (same token-major layout).
cuda::HostTap host_tap(const LayerTap& tap) {
  if (!tap) return {};
  return [tap](const cuda::LayerHostTensors& h) {
    LayerTensors lt;
    lt.layer = h.layer, lt.pos0 = h.pos0, lt.T = h.T;
    lt.q_pre = h.q_pre, lt.k_pre = h.k_pre, lt.q = h.q, lt.k = h.k, lt.v = h.v, lt.o = h.o;
    tap(lt);
  };
}

}  // namespace

Backend parse_runner_backend(const std::string& s) {
  if (s == "auto" && backend_available(Backend::cuda)) return Backend::cuda;
  if (s == "cpu" || s == "auto" || s.empty()) return backend_available(Backend::omp) ? Backend::omp : Backend::ref;
  if (s == "cuda") {
    require_backend(Backend::cuda);  // "built without CUDA" or "no CUDA device": exit 2, as for `run`
    return Backend::cuda;
  }
  if (s == "ref" || s == "omp") {
    const Backend b = parse_backend(s);
    require_backend(b);
    return b;
  }
  throw UsageError("--backend " + s + ": unknown (choose cpu, ref, omp or cuda)");
}

Runner::Runner(const Model& model, Backend backend, KvCacheFactory caches) : model_(model), backend_(backend) {
  require_backend(backend);
  const ModelConfig& c = model_.config;
  if (backend == Backend::cuda) {
    if (caches)
      throw NotCompiled(
          "backend cuda: the GPU runner keeps a full KV cache on the device; strategy-managed caches "
          "run on --backend cpu");
    gpu_ = std::make_unique<cuda::DecoderRunner>(decoder_host(model_));
    return;
  }
  if (!caches) caches = full_cache_factory();
  for (int64_t l = 0; l < c.n_layers; ++l)
    for (int64_t g = 0; g < c.n_kv_heads; ++g) caches_.push_back(caches(l, g, c.head_dim, c.seq_len));
  views_.resize(static_cast<size_t>(c.n_kv_heads));
}

Runner::~Runner() = default;

void Runner::reset() {
  if (gpu_) gpu_->reset();
  for (auto& c : caches_) c->clear();
  pos_ = 0;
}

void Runner::load_prefix(int64_t n, const std::vector<std::vector<float>>& keys,
                         const std::vector<std::vector<float>>& values) {
  if (gpu_) throw NotCompiled("backend cuda: loading a cached prefix into the device KV cache is not supported");
  const ModelConfig& c = model_.config;
  if (n < 0 || n > c.seq_len)
    throw UsageError(c.name + ": a cached prefix of " + std::to_string(n) +
                     " tokens does not fit seq_len = " + std::to_string(c.seq_len));
  const size_t need = static_cast<size_t>(n * c.head_dim);
  KVSIM_ASSERT(keys.size() == caches_.size() && values.size() == caches_.size());
  reset();
  for (size_t i = 0; i < caches_.size(); ++i) {
    KVSIM_ASSERT(keys[i].size() >= need && values[i].size() >= need);
    if (n > 0) caches_[i]->append(keys[i].data(), values[i].data(), n, 0);
  }
  pos_ = n;
}

void Runner::wait_taps() {
  if (gpu_) gpu_->wait_taps();
}

KvCache& Runner::cache(int64_t layer, int64_t kv_head) {
  if (gpu_) throw NotCompiled("backend cuda: the KV cache lives on the device (no host KvCache to inspect)");
  return *caches_[static_cast<size_t>(layer * model_.config.n_kv_heads + kv_head)];
}

void Runner::check_tokens(const int32_t* tokens, int64_t T) const {
  const ModelConfig& c = model_.config;
  if (T < 1) throw UsageError("forward: no tokens to run");
  if (pos_ + T > c.seq_len)
    throw UsageError(c.name + ": " + std::to_string(pos_ + T) +
                     " tokens exceed the context length seq_len = " + std::to_string(c.seq_len));
  for (int64_t t = 0; t < T; ++t)
    if (tokens[t] < 0 || tokens[t] >= c.vocab_size)
      throw UsageError(c.name + ": token id " + std::to_string(tokens[t]) + " at position " + std::to_string(pos_ + t) +
                       " is outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
}

void Runner::ensure_buffers(int64_t T) {
  if (T <= cap_) return;
  const ModelConfig& c = model_.config;
  grow(x_, T * c.dim);
  grow(xb_, T * c.dim);
  grow(q_, T * c.q_dim());
  grow(q_pre_, T * c.q_dim());
  grow(att_, T * c.q_dim());
  grow(k_, T * c.kv_dim());
  grow(v_, T * c.kv_dim());
  grow(k_pre_, T * c.kv_dim());
  grow(kh_, T * c.head_dim);
  grow(vh_, T * c.head_dim);
  grow(hb_, T * c.hidden_dim);
  grow(hb2_, T * c.hidden_dim);
  cap_ = T;
}

const float* Runner::forward(const int32_t* tokens, int64_t T, bool all_logits, const LayerTap& tap, TapKinds kinds) {
  const ModelConfig& c = model_.config;
  check_tokens(tokens, T);
  if (gpu_) {
    cuda::TapKinds k;
    k.pre = kinds.pre, k.output = kinds.output;
    const float* logits = gpu_->forward(tokens, T, all_logits, host_tap(tap), k);
    pos_ += T;
    return logits;
  }
  ensure_buffers(T);
  const Kernels& op = kernels(backend_);
  const int64_t dim = c.dim, H = c.n_heads, Hkv = c.n_kv_heads, D = c.head_dim, hid = c.hidden_dim;
  const int64_t qd = c.q_dim(), kvd = c.kv_dim();
  const float* inv_freq = c.inv_freq.empty() ? nullptr : c.inv_freq.data();
  float* x = x_.data();
  float* xb = xb_.data();

  for (int64_t t = 0; t < T; ++t)
    std::memcpy(x + t * dim, model_.embedding.data() + static_cast<int64_t>(tokens[t]) * dim,
                static_cast<size_t>(dim) * sizeof(float));

  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = model_.layers[static_cast<size_t>(l)];
    auto bias = [](const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); };
    // attention block
    op.rmsnorm(x, w.rms_att.data(), xb, T, dim, c.norm_eps);
    op.matmul(xb, w.wq.data(), bias(w.bq), q_.data(), T, dim, qd);
    op.matmul(xb, w.wk.data(), bias(w.bk), k_.data(), T, dim, kvd);
    op.matmul(xb, w.wv.data(), bias(w.bv), v_.data(), T, dim, kvd);
    if (tap) {
      std::copy_n(q_.data(), T * qd, q_pre_.data());
      std::copy_n(k_.data(), T * kvd, k_pre_.data());
    }
    op.rope(q_.data(), T, H, D, pos_, c.rope_theta, c.rope_style, inv_freq);
    op.rope(k_.data(), T, Hkv, D, pos_, c.rope_theta, c.rope_style, inv_freq);
    int64_t n_self = 0;  // KV heads whose cache attended itself (KvCache::attend: strategy caches)
    for (int64_t g = 0; g < Hkv; ++g) {
      for (int64_t t = 0; t < T; ++t) {
        std::copy_n(k_.data() + (t * Hkv + g) * D, D, kh_.data() + t * D);
        std::copy_n(v_.data() + (t * Hkv + g) * D, D, vh_.data() + t * D);
      }
      KvCache& cache = *caches_[static_cast<size_t>(l * Hkv + g)];
      cache.append(kh_.data(), vh_.data(), T, pos_);
      const int64_t G = H / Hkv;
      if (cache.attend(q_.data() + g * G * D, qd, T, G, pos_, att_.data() + g * G * D))
        ++n_self;
      else
        views_[static_cast<size_t>(g)] = cache.view();
    }
    KVSIM_ASSERT(n_self == 0 || n_self == Hkv);
    if (n_self == 0) op.attention(q_.data(), views_.data(), att_.data(), T, H, Hkv, D, pos_);
    for (int64_t g = 0; g < Hkv; ++g) caches_[static_cast<size_t>(l * Hkv + g)]->end_step();
    if (tap) {
      LayerTensors lt;
      lt.layer = l;
      lt.pos0 = pos_;
      lt.T = T;
      lt.q_pre = q_pre_.data();
      lt.k_pre = k_pre_.data();
      lt.q = q_.data();
      lt.k = k_.data();
      lt.v = v_.data();
      lt.o = att_.data();
      tap(lt);
    }
    op.matmul(att_.data(), w.wo.data(), nullptr, xb, T, qd, dim);
    for (int64_t i = 0; i < T * dim; ++i) x[i] += xb[i];
    // SwiGLU feed-forward block
    op.rmsnorm(x, w.rms_ffn.data(), xb, T, dim, c.norm_eps);
    op.matmul(xb, w.w1.data(), nullptr, hb_.data(), T, dim, hid);
    op.matmul(xb, w.w3.data(), nullptr, hb2_.data(), T, dim, hid);
    op.swiglu(hb_.data(), hb2_.data(), hb_.data(), T * hid);
    op.matmul(hb_.data(), w.w2.data(), nullptr, xb, T, hid, dim);
    for (int64_t i = 0; i < T * dim; ++i) x[i] += xb[i];
  }

  const int64_t n_out = all_logits ? T : 1;
  const float* xin = x + (T - n_out) * dim;
  op.rmsnorm(xin, model_.rms_final.data(), xb, n_out, dim, c.norm_eps);
  grow(logits_, n_out * c.vocab_size);
  op.matmul(xb, model_.classifier(), nullptr, logits_.data(), n_out, dim, c.vocab_size);
  pos_ += T;
  return logits_.data();
}

}  // namespace kvsim::model
