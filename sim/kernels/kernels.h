// One table per backend of its hot kernels (design.md §8): callers pick a backend once and call
// through kernels(b), instead of switching on the backend at every call site. The contracts are
// in the kernel family headers: attend.h, attn_stats.h, quant.h, forward_ops.h.
#pragma once

#include "sim/kernels/attend.h"
#include "sim/kernels/attn_stats.h"
#include "sim/kernels/backend.h"
#include "sim/kernels/forward_ops.h"
#include "sim/kernels/quant.h"

namespace kvsim {

struct Kernels {
  Backend backend = Backend::ref;
  AttendSlots* attend_slots = nullptr;
  AttnStats* attn_stats = nullptr;
  PromptColsums* prompt_colsums = nullptr;
  QuantUniform* quant_uniform = nullptr;
  DequantUniform* dequant_uniform = nullptr;
  QuantNf4* quant_nf4 = nullptr;
  DequantNf4* dequant_nf4 = nullptr;
  // The CPU forward pass (null for cuda, whose forward pass runs on device buffers:
  // cuda/forward_runner.h).
  Matmul* matmul = nullptr;
  Rmsnorm* rmsnorm = nullptr;
  Rope* rope = nullptr;
  Softmax* softmax = nullptr;
  Swiglu* swiglu = nullptr;
  Attention* attention = nullptr;
  Argmax* argmax = nullptr;
};

// The table of backend b. Every backend has one, built or not: cuda's kernels throw NotCompiled
// when CUDA is off, and omp's run on one thread without OpenMP (require_backend() tells first).
const Kernels& kernels(Backend b);

}  // namespace kvsim
