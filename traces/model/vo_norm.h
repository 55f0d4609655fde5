// n[h, i] = ||W_o,h v_i||_1: the L1 norm of token i's value carried through query head h's block of
// the output projection (W_o,h = wo[:, h*D : (h+1)*D], the columns that multiply head h's attention
// output; v_i is the value of head h's KV head h / G). CriticalKV and DefensiveKV (methods.md §3.2,
// §3.14) weight attention scores by it; the recorder writes it as the trace's optional `vo_norm`
// (traces/FORMAT.md), since W_o is not in the trace.
#pragma once

#include <cstdint>

namespace kvsim::model {

// Plain loops, double accumulation (each of the dim outputs and their sum), one (h, token) pair per
// OpenMP iteration where built: the result does not depend on the thread count.
void vo_norm(const float* wo,  // [dim, H*D], as the model stores o_proj ([out, in])
             const float* v,   // [T, Hkv, D], token-major as the runner's LayerTensors
             int64_t T, int64_t H, int64_t Hkv, int64_t D, int64_t dim,
             float* out);  // [H, T]

}  // namespace kvsim::model
