#include "sim/kernels/kernels.h"

namespace kvsim {

namespace {

// Tables: one row per kernel family.
// clang-format off
const Kernels kRef{Backend::ref,
                   ref::attend_slots, ref::attn_stats, ref::prompt_colsums,
                   ref::quant_uniform, ref::dequant_uniform, ref::quant_nf4, ref::dequant_nf4,
                   ref::matmul, ref::rmsnorm, ref::rope, ref::softmax, ref::swiglu, ref::attention, ref::argmax};
const Kernels kOmp{Backend::omp,
                   omp::attend_slots, omp::attn_stats, omp::prompt_colsums,
                   omp::quant_uniform, omp::dequant_uniform, omp::quant_nf4, omp::dequant_nf4,
                   omp::matmul, omp::rmsnorm, omp::rope, omp::softmax, omp::swiglu, omp::attention, omp::argmax};
const Kernels kCuda{Backend::cuda,
                    cuda::attend_slots, cuda::attn_stats, cuda::prompt_colsums,
                    cuda::quant_uniform, cuda::dequant_uniform, cuda::quant_nf4, cuda::dequant_nf4};
// clang-format on

}  // namespace

const Kernels& kernels(Backend b) {
  switch (b) {
    case Backend::omp: return kOmp;
    case Backend::cuda: return kCuda;
    case Backend::ref: break;
  }
  return kRef;
}

}  // namespace kvsim
