// The GPU decoder (cuda/forward_runner.h): the forward pass of traces/model/runner.cpp on device
// buffers, and the recording ring that streams each layer's tensors to a writer thread.
#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <string>
#include <thread>

#include "cuda/buffer.h"
#include "cuda/check.h"
#include "cuda/device.h"
#include "cuda/forward_core.h"
#include "cuda/forward_ops.h"
#include "cuda/forward_runner.h"

namespace kvsim::cuda {

namespace {

// k_tok, v_tok [T, Hkv, D] (token-major, after RoPE) -> rows pos0 .. pos0+T-1 of each head's
// cache [Hkv, cap, D].
__global__ void append_kv_kernel(const float* k_tok, const float* v_tok, float* kc, float* vc, int64_t T, int64_t Hkv,
                                 int64_t D, int64_t cap, int64_t pos0) {
  const int64_t total = T * Hkv * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t dst = core::kv_cache_index(i, Hkv, D, cap, pos0);
    kc[dst] = k_tok[i];
    vc[dst] = v_tok[i];
  }
}

void upload(DeviceBuffer<float>& dst, const float* src, int64_t n, cudaStream_t s) {
  if (src && n > 0) dst.upload(src, static_cast<size_t>(n), s);
}

class Event {
 public:
  Event() { KVSIM_CUDA_CHECK(cudaEventCreateWithFlags(&e_, cudaEventDisableTiming)); }
  ~Event() { cudaEventDestroy(e_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_{};
};

}  // namespace

// ---- the recording ring ---------------------------------------------------------------------
// Slots of pinned buffers. The compute thread takes a free slot, enqueues the layer's
// device-to-host copies on the copy stream (after an event on the compute stream) and queues the
// slot; the writer thread waits for the copies, calls the tap and frees the slot. With kSlots
// slots the GPU runs up to kSlots layers ahead of the writer.
class TapRing {
 public:
  static constexpr int kSlots = 3;
  struct Slot {
    PinnedBuffer<float> q_pre, k_pre, q, k, v, o;
    Event ready, copied;
    LayerHostTensors lt;
    HostTap tap;
  };

  TapRing() : slots_(kSlots) {
    for (int i = 0; i < kSlots; ++i) free_.push_back(i);
  }
  ~TapRing() {
    {
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [&] { return pending_ == 0; });
      stop_ = true;
    }
    cv_.notify_all();
    if (writer_.joinable()) writer_.join();
  }

  // A free slot (blocks while the writer is behind); rethrows a tap's exception.
  Slot& acquire(int* index) {
    std::unique_lock<std::mutex> lk(m_);
    if (!writer_.joinable()) {
      int dev = 0;  // the current device is per thread: the writer waits on this one's events
      KVSIM_CUDA_CHECK(cudaGetDevice(&dev));
      writer_ = std::thread([this, dev] {
        cudaSetDevice(dev);  // a failure shows in the first cudaEventSynchronize
        run();
      });
    }
    cv_.wait(lk, [&] { return !free_.empty() || error_; });
    if (error_) {  // a tap failed: let the queued ones finish, then report it here
      cv_.wait(lk, [&] { return pending_ == 0; });
      std::exception_ptr e = error_;
      error_ = nullptr;
      std::rethrow_exception(e);
    }
    *index = free_.front();
    free_.pop_front();
    ++pending_;
    return slots_[static_cast<size_t>(*index)];
  }
  // Gives back a slot that was never submitted (its copies failed to enqueue).
  void cancel(int index) {
    {
      std::lock_guard<std::mutex> lk(m_);
      free_.push_back(index);
      --pending_;
    }
    cv_.notify_all();
  }
  void submit(int index) {
    {
      std::lock_guard<std::mutex> lk(m_);
      ready_.push_back(index);
    }
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lk(m_);
    cv_.wait(lk, [&] { return pending_ == 0; });
    if (error_) {
      std::exception_ptr e = error_;
      error_ = nullptr;
      std::rethrow_exception(e);
    }
  }

 private:
  void run() {
    for (;;) {
      int i = -1;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return stop_ || !ready_.empty(); });
        if (ready_.empty()) return;
        i = ready_.front();
        ready_.pop_front();
      }
      Slot& s = slots_[static_cast<size_t>(i)];
      std::exception_ptr err;
      try {
        KVSIM_CUDA_CHECK(cudaEventSynchronize(s.copied.get()));
        if (!has_error()) s.tap(s.lt);
      } catch (...) {
        err = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lk(m_);
        if (err && !error_) error_ = err;
        free_.push_back(i);
        --pending_;
      }
      cv_.notify_all();
    }
  }
  bool has_error() {
    std::lock_guard<std::mutex> lk(m_);
    return static_cast<bool>(error_);
  }

  std::vector<Slot> slots_;
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<int> free_, ready_;
  int pending_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread writer_;
};

// ---- the decoder ------------------------------------------------------------------------------

struct DecoderRunner::Impl {
  struct Layer {
    DeviceBuffer<float> rms_att, wq, wk, wv, bq, bk, bv, wo, rms_ffn, w1, w2, w3;
    DeviceBuffer<float> kc, vc;  // [Hkv, seq_len, D]
  };
  DecoderDims d;
  Stream compute, copy;
  DeviceBuffer<float> emb, rms_final, cls_own, inv_freq;
  const float* cls = nullptr;
  bool has_inv_freq = false;
  std::vector<Layer> layers;
  int64_t cap = 0, pos = 0;
  DeviceBuffer<float> x, xb, q, k, v, q_pre, k_pre, att, hb, hb2, logits;
  DeviceBuffer<int32_t> ids;
  PinnedBuffer<float> logits_host;
  PinnedBuffer<int32_t> ids_host;
  TapRing ring;
  cudaEvent_t last_copy = nullptr;  // the compute stream waits on it before overwriting tapped buffers

  explicit Impl(const DecoderHost& m);
  void ensure(int64_t T);
  void attention_block(int64_t l, int64_t T, const HostTap& tap, TapKinds kinds);
  void ffn_block(int64_t l, int64_t T);
  void tap_layer(int64_t l, int64_t T, const HostTap& tap, TapKinds kinds);
  void enqueue_copies(TapRing::Slot& slot, int64_t l, int64_t T, TapKinds kinds);
};

DecoderRunner::Impl::Impl(const DecoderHost& m) : d(m.dims), layers(static_cast<size_t>(m.dims.n_layers)) {
  const cudaStream_t s = compute.get();
  const int64_t dim = d.dim, qd = d.n_heads * d.head_dim, kvd = d.n_kv_heads * d.head_dim, hid = d.hidden_dim;
  upload(emb, m.embedding, d.vocab_size * dim, s);
  upload(rms_final, m.rms_final, dim, s);
  if (m.classifier == m.embedding) {
    cls = emb.data();
  } else {
    upload(cls_own, m.classifier, d.vocab_size * dim, s);
    cls = cls_own.data();
  }
  has_inv_freq = m.inv_freq != nullptr;
  upload(inv_freq, m.inv_freq, d.head_dim / 2, s);
  for (size_t l = 0; l < layers.size(); ++l) {
    const DecoderLayerHost& w = m.layers[l];
    Layer& L = layers[l];
    upload(L.rms_att, w.rms_att, dim, s);
    upload(L.wq, w.wq, qd * dim, s);
    upload(L.wk, w.wk, kvd * dim, s);
    upload(L.wv, w.wv, kvd * dim, s);
    upload(L.bq, w.bq, qd, s);
    upload(L.bk, w.bk, kvd, s);
    upload(L.bv, w.bv, kvd, s);
    upload(L.wo, w.wo, dim * qd, s);
    upload(L.rms_ffn, w.rms_ffn, dim, s);
    upload(L.w1, w.w1, hid * dim, s);
    upload(L.w2, w.w2, dim * hid, s);
    upload(L.w3, w.w3, hid * dim, s);
    L.kc.resize(static_cast<size_t>(kvd * d.seq_len));
    L.vc.resize(static_cast<size_t>(kvd * d.seq_len));
  }
  compute.sync();  // the host weights may go away after the constructor
}

void DecoderRunner::Impl::ensure(int64_t T) {
  if (T <= cap) return;
  // the buffers about to be reallocated may still be the source of a tap's copies
  KVSIM_CUDA_CHECK(cudaStreamSynchronize(copy.get()));
  const size_t t = static_cast<size_t>(T);
  const size_t dim = static_cast<size_t>(d.dim), qd = static_cast<size_t>(d.n_heads * d.head_dim),
               kvd = static_cast<size_t>(d.n_kv_heads * d.head_dim), hid = static_cast<size_t>(d.hidden_dim);
  x.resize(t * dim), xb.resize(t * dim);
  q.resize(t * qd), q_pre.resize(t * qd), att.resize(t * qd);
  k.resize(t * kvd), v.resize(t * kvd), k_pre.resize(t * kvd);
  hb.resize(t * hid), hb2.resize(t * hid);
  ids.resize(t), ids_host.resize(t);
  cap = T;
}

static const float* or_null(const DeviceBuffer<float>& b) { return b.size() ? b.data() : nullptr; }

void DecoderRunner::Impl::attention_block(int64_t l, int64_t T, const HostTap& tap, TapKinds kinds) {
  Layer& L = layers[static_cast<size_t>(l)];
  const cudaStream_t s = compute.get();
  const int64_t dim = d.dim, H = d.n_heads, Hkv = d.n_kv_heads, D = d.head_dim;
  const int64_t qd = H * D, kvd = Hkv * D;
  rmsnorm(x.data(), L.rms_att.data(), xb.data(), T, dim, d.norm_eps, s);
  // q, k, v, q_pre, k_pre, att may still be copying out for the previous layer's tap
  if (last_copy) KVSIM_CUDA_CHECK(cudaStreamWaitEvent(s, last_copy, 0));
  matmul(xb.data(), L.wq.data(), or_null(L.bq), q.data(), T, dim, qd, s);
  matmul(xb.data(), L.wk.data(), or_null(L.bk), k.data(), T, dim, kvd, s);
  matmul(xb.data(), L.wv.data(), or_null(L.bv), v.data(), T, dim, kvd, s);
  if (tap && kinds.pre) {
    KVSIM_CUDA_CHECK(cudaMemcpyAsync(q_pre.data(), q.data(), static_cast<size_t>(T * qd) * sizeof(float),
                                     cudaMemcpyDeviceToDevice, s));
    KVSIM_CUDA_CHECK(cudaMemcpyAsync(k_pre.data(), k.data(), static_cast<size_t>(T * kvd) * sizeof(float),
                                     cudaMemcpyDeviceToDevice, s));
  }
  const float* f = has_inv_freq ? inv_freq.data() : nullptr;
  rope(q.data(), T, H, D, pos, d.rope_theta, d.rope_style, f, s);
  rope(k.data(), T, Hkv, D, pos, d.rope_theta, d.rope_style, f, s);
  const int64_t total = T * kvd;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 65535));
  append_kv_kernel<<<blocks, 256, 0, s>>>(k.data(), v.data(), L.kc.data(), L.vc.data(), T, Hkv, D, d.seq_len, pos);
  check_launch("append_kv_kernel");
  attention(q.data(), L.kc.data(), L.vc.data(), nullptr, nullptr, att.data(), T, H, Hkv, D, pos + T, d.seq_len * D, pos,
            s);
  if (tap) tap_layer(l, T, tap, kinds);
  matmul(att.data(), L.wo.data(), nullptr, xb.data(), T, qd, dim, s);
  add_inplace(x.data(), xb.data(), T * dim, s);
}

void DecoderRunner::Impl::ffn_block(int64_t l, int64_t T) {
  Layer& L = layers[static_cast<size_t>(l)];
  const cudaStream_t s = compute.get();
  const int64_t dim = d.dim, hid = d.hidden_dim;
  rmsnorm(x.data(), L.rms_ffn.data(), xb.data(), T, dim, d.norm_eps, s);
  matmul(xb.data(), L.w1.data(), nullptr, hb.data(), T, dim, hid, s);
  matmul(xb.data(), L.w3.data(), nullptr, hb2.data(), T, dim, hid, s);
  swiglu(hb.data(), hb2.data(), hb.data(), T * hid, s);
  matmul(hb.data(), L.w2.data(), nullptr, xb.data(), T, hid, dim, s);
  add_inplace(x.data(), xb.data(), T * dim, s);
}

// Enqueues the layer's device-to-host copies on the copy stream and queues them for the writer.
void DecoderRunner::Impl::tap_layer(int64_t l, int64_t T, const HostTap& tap, TapKinds kinds) {
  int index = 0;
  TapRing::Slot& slot = ring.acquire(&index);
  try {
    enqueue_copies(slot, l, T, kinds);
  } catch (...) {
    ring.cancel(index);  // else wait_taps() would wait for it forever
    throw;
  }
  slot.tap = tap;
  ring.submit(index);
}

void DecoderRunner::Impl::enqueue_copies(TapRing::Slot& slot, int64_t l, int64_t T, TapKinds kinds) {
  const cudaStream_t cs = copy.get();
  KVSIM_CUDA_CHECK(cudaEventRecord(slot.ready.get(), compute.get()));
  KVSIM_CUDA_CHECK(cudaStreamWaitEvent(cs, slot.ready.get(), 0));
  const size_t qn = static_cast<size_t>(T * d.n_heads * d.head_dim),
               kvn = static_cast<size_t>(T * d.n_kv_heads * d.head_dim);
  auto out = [&](PinnedBuffer<float>& dst, const DeviceBuffer<float>& src, size_t n) {
    dst.resize(n);
    KVSIM_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), n * sizeof(float), cudaMemcpyDeviceToHost, cs));
    return static_cast<const float*>(dst.data());
  };
  LayerHostTensors& lt = slot.lt;
  lt = LayerHostTensors{};
  lt.layer = l, lt.pos0 = pos, lt.T = T;
  lt.q = out(slot.q, q, qn);
  lt.k = out(slot.k, k, kvn);
  lt.v = out(slot.v, v, kvn);
  if (kinds.pre) lt.q_pre = out(slot.q_pre, q_pre, qn), lt.k_pre = out(slot.k_pre, k_pre, kvn);
  if (kinds.output) lt.o = out(slot.o, att, qn);
  KVSIM_CUDA_CHECK(cudaEventRecord(slot.copied.get(), cs));
  last_copy = slot.copied.get();
}

DecoderRunner::DecoderRunner(const DecoderHost& model) {
  require_device();
  impl_ = std::make_unique<Impl>(model);
}

DecoderRunner::~DecoderRunner() = default;

void DecoderRunner::reset() {
  wait_taps();
  impl_->pos = 0;  // the cache rows beyond pos are never read: attention sees slots < pos + T only
}

void DecoderRunner::wait_taps() { impl_->ring.wait(); }

int64_t DecoderRunner::pos() const { return impl_->pos; }

const float* DecoderRunner::forward(const int32_t* tokens, int64_t T, bool all_logits, const HostTap& tap,
                                    TapKinds kinds) {
  Impl& I = *impl_;
  const DecoderDims& d = I.d;
  I.ensure(T);
  const cudaStream_t s = I.compute.get();
  // ids_host may still be the source of the previous call's upload: that call synchronised below.
  std::copy_n(tokens, T, I.ids_host.data());
  KVSIM_CUDA_CHECK(cudaMemcpyAsync(I.ids.data(), I.ids_host.data(), static_cast<size_t>(T) * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, s));
  gather_rows(I.emb.data(), I.ids.data(), I.x.data(), T, d.dim, s);
  for (int64_t l = 0; l < d.n_layers; ++l) {
    I.attention_block(l, T, tap, kinds);
    I.ffn_block(l, T);
  }
  const int64_t n_out = all_logits ? T : 1;
  rmsnorm(I.x.data() + (T - n_out) * d.dim, I.rms_final.data(), I.xb.data(), n_out, d.dim, d.norm_eps, s);
  const size_t nl = static_cast<size_t>(n_out * d.vocab_size);
  I.logits.resize(nl);
  I.logits_host.resize(nl);
  matmul(I.xb.data(), I.cls, nullptr, I.logits.data(), n_out, d.dim, d.vocab_size, s);
  I.logits.download(I.logits_host.data(), nl, s);
  I.compute.sync();
  I.pos += T;
  return I.logits_host.data();
}

}  // namespace kvsim::cuda
