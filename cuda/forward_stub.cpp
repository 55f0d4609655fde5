// Built instead of cuda/forward_ops.cu and cuda/forward_runner.cu when KVSIM_CUDA is off: every
// entry point throws NotCompiled, so callers link and fail with one line at run time.
#include "cuda/forward_ops.h"
#include "cuda/forward_runner.h"
#include "sim/base/error.h"

namespace kvsim::cuda {

namespace {
[[noreturn]] void no_cuda() { throw NotCompiled("built without CUDA"); }
}  // namespace

bool cublas_loadable(std::string* why) {
  if (why) *why = "built without CUDA";
  return false;
}
void matmul(const float*, const float*, const float*, float*, int64_t, int64_t, int64_t, StreamPtr) { no_cuda(); }
void rmsnorm(const float*, const float*, float*, int64_t, int64_t, float, StreamPtr) { no_cuda(); }
void rope(float*, int64_t, int64_t, int64_t, int64_t, double, RopeStyle, const float*, StreamPtr) { no_cuda(); }
void swiglu(const float*, const float*, float*, int64_t, StreamPtr) { no_cuda(); }
void attention(const float*, const float*, const float*, const float*, const int64_t*, float*, int64_t, int64_t,
               int64_t, int64_t, int64_t, int64_t, int64_t, StreamPtr) {
  no_cuda();
}
int64_t argmax(const float*, int64_t, StreamPtr) { no_cuda(); }
void add_inplace(float*, const float*, int64_t, StreamPtr) { no_cuda(); }
void gather_rows(const float*, const int32_t*, float*, int64_t, int64_t, StreamPtr) { no_cuda(); }

DeviceArray::DeviceArray(size_t) { no_cuda(); }
DeviceArray::~DeviceArray() = default;
DeviceArray::DeviceArray(DeviceArray&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
DeviceArray& DeviceArray::operator=(DeviceArray&& o) noexcept {
  p_ = o.p_, n_ = o.n_;
  o.p_ = nullptr, o.n_ = 0;
  return *this;
}
void DeviceArray::upload(const void*, size_t) { no_cuda(); }
void DeviceArray::download(void*, size_t) const { no_cuda(); }

struct DecoderRunner::Impl {};
DecoderRunner::DecoderRunner(const DecoderHost&) { no_cuda(); }
DecoderRunner::~DecoderRunner() = default;
void DecoderRunner::reset() { no_cuda(); }
const float* DecoderRunner::forward(const int32_t*, int64_t, bool, const HostTap&, TapKinds) { no_cuda(); }
void DecoderRunner::wait_taps() {}
int64_t DecoderRunner::pos() const { return 0; }

}  // namespace kvsim::cuda
