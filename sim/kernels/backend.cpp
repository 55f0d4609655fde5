#include "sim/kernels/backend.h"

#ifdef KVSIM_HAVE_OPENMP
#include <omp.h>
#endif

#include "cuda/device.h"
#include "sim/base/error.h"

namespace kvsim {

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::ref: return "ref";
    case Backend::omp: return "omp";
    case Backend::cuda: return "cuda";
  }
  return "?";
}

Backend parse_backend(const std::string& s) {
  if (s == "ref") return Backend::ref;
  if (s == "omp") return Backend::omp;
  if (s == "cuda") return Backend::cuda;
  if (s == "auto" || s.empty()) return fastest_backend();
  throw UsageError("unknown backend '" + s + "' (choose ref, omp, cuda or auto)");
}

bool backend_available(Backend b, std::string* why_not) {
  switch (b) {
    case Backend::ref: return true;
    case Backend::omp:
#ifdef KVSIM_HAVE_OPENMP
      return true;
#else
      if (why_not) *why_not = "backend omp: kvsim was built without OpenMP (KVSIM_OPENMP=OFF)";
      return false;
#endif
    case Backend::cuda:
      if (!cuda::built_with_cuda()) {
        if (why_not) *why_not = "backend cuda: kvsim was built without CUDA (KVSIM_CUDA=OFF)";
        return false;
      }
      if (cuda::device_count() < 1) {
        if (why_not) *why_not = "backend cuda: no CUDA device found (" + cuda::device_error() + ")";
        return false;
      }
      return true;
  }
  return false;
}

void require_backend(Backend b) {
  std::string why;
  if (!backend_available(b, &why)) throw NotCompiled(why);
  if (b == Backend::cuda) cuda::select_device();
}

std::vector<Backend> available_backends() {
  std::vector<Backend> out;
  for (Backend b : {Backend::ref, Backend::omp, Backend::cuda})
    if (backend_available(b)) out.push_back(b);
  return out;
}

Backend fastest_backend() {
  if (backend_available(Backend::cuda)) return Backend::cuda;
  if (backend_available(Backend::omp)) return Backend::omp;
  return Backend::ref;
}

Backend parse_replay_backend(const std::string& s) {
  Backend b = parse_backend(s);
  if ((s == "auto" || s.empty()) && b == Backend::cuda)
    b = backend_available(Backend::omp) ? Backend::omp : Backend::ref;
  require_backend(b);
  return b;
}

int omp_threads() {
#ifdef KVSIM_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace kvsim
