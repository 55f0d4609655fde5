#include "sim/kernels/attn_stats.h"

#include <cmath>
#include <string>

#include "cuda/buffer.h"
#include "sim/base/error.h"
#include "sim/kernels/attn_stats_core.h"

namespace kvsim::cuda {

namespace {

using core::kStatsKeyTile;
using core::kStatsMaxD;
using core::kStatsMaxK;
using core::kStatsQueryTile;

// grid (query tiles, H), block kStatsQueryTile threads; dynamic shared memory: K and V tiles
// [kStatsKeyTile, D] floats each. Latest query tiles (the longest rows) are scheduled first.
__global__ void attn_stats_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                  int64_t H, int64_t G, int64_t T, int64_t D, int K, double scale, float* o,
                                  double* lse, float* entropy, int32_t* top_pos, float* top_w) {
  extern __shared__ float tiles[];
  float* ks = tiles;
  float* vs = tiles + kStatsKeyTile * D;
  const int64_t n_tiles = gridDim.x;
  const int64_t h = blockIdx.y;
  const int64_t t0 = (n_tiles - 1 - static_cast<int64_t>(blockIdx.x)) * kStatsQueryTile;
  const int64_t nq = min(static_cast<int64_t>(kStatsQueryTile), T - t0);
  const int64_t t = t0 + threadIdx.x;
  const bool active = threadIdx.x < nq;
  const float* kh = k + (h / G) * T * D;
  const float* vh = v + (h / G) * T * D;

  double acc[kStatsMaxD];
  float tz[kStatsMaxK];
  int32_t tp[kStatsMaxK];
  double z[kStatsKeyTile];
  core::StatsRow row{0, 0, 0, acc, tz, tp};
  core::stats_row_init(row, D, K);
  const float* qt = q + (h * T + (active ? t : t0)) * D;
  const int64_t last = t0 + nq - 1;
  for (int64_t i0 = 0; i0 <= last; i0 += kStatsKeyTile) {
    const int64_t nk = min(static_cast<int64_t>(kStatsKeyTile), last + 1 - i0);
    __syncthreads();  // the previous tile is no longer read
    for (int64_t e = threadIdx.x; e < nk * D; e += blockDim.x) {
      ks[e] = kh[i0 * D + e];
      vs[e] = vh[i0 * D + e];
    }
    __syncthreads();
    if (active) core::stats_row_tile(row, qt, ks, vs, i0, nk, t, D, scale, K, z);
  }
  if (active) core::stats_row_finish(row, h * T + t, D, K, o, lse, entropy, top_pos, top_w);
}

__global__ void prompt_colsums_kernel(const float* __restrict__ q, const float* __restrict__ k,
                                      const double* __restrict__ lse, int64_t H, int64_t G, int64_t T, int64_t D,
                                      int64_t P, double scale, float* colsum) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= H * P) return;
  const int64_t h = idx / P, i = idx % P;
  colsum[idx] = core::prompt_colsum_one(q + h * T * D, k + ((h / G) * T + i) * D, lse + h * T, i, P, D, scale);
}

void check_shapes(int64_t H, int64_t Hkv, int64_t T, int64_t D, int64_t K) {
  if (H <= 0 || Hkv <= 0 || H % Hkv != 0 || T <= 0 || D <= 0)
    throw UsageError("cuda::attn_stats: bad shape H = " + std::to_string(H) + ", Hkv = " + std::to_string(Hkv) +
                     ", T = " + std::to_string(T) + ", D = " + std::to_string(D));
  if (D > kStatsMaxD || K > kStatsMaxK || K < 0)
    throw UsageError("cuda::attn_stats: D = " + std::to_string(D) + " (at most " + std::to_string(kStatsMaxD) +
                     ") or K = " + std::to_string(K) + " (at most " + std::to_string(kStatsMaxK) + ") too large");
}

}  // namespace

void attn_stats(const float* q, const float* k, const float* v, int64_t H, int64_t Hkv, int64_t T, int64_t D, int64_t K,
                float* o, double* lse, float* entropy, int32_t* top_pos, float* top_w) {
  check_shapes(H, Hkv, T, D, K);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  Stream s;
  DeviceBuffer<float> dq, dk, dv, d_o, d_ent, d_tw;
  DeviceBuffer<double> d_lse;
  DeviceBuffer<int32_t> d_tp;
  dq.upload(q, H * T * D, s.get());
  dk.upload(k, Hkv * T * D, s.get());
  dv.upload(v, Hkv * T * D, s.get());
  d_o.resize(H * T * D), d_ent.resize(H * T), d_lse.resize(H * T);
  d_tp.resize(std::max<int64_t>(1, H * T * K)), d_tw.resize(std::max<int64_t>(1, H * T * K));
  const size_t shmem = 2 * kStatsKeyTile * D * sizeof(float);
  KVSIM_CUDA_CHECK(
      cudaFuncSetAttribute(attn_stats_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shmem)));
  const dim3 grid(static_cast<unsigned>((T + kStatsQueryTile - 1) / kStatsQueryTile), static_cast<unsigned>(H));
  attn_stats_kernel<<<grid, kStatsQueryTile, shmem, s.get()>>>(dq.data(), dk.data(), dv.data(), H, H / Hkv, T, D,
                                                               static_cast<int>(K), scale, d_o.data(), d_lse.data(),
                                                               d_ent.data(), d_tp.data(), d_tw.data());
  check_launch("attn_stats_kernel");
  d_o.download(o, H * T * D, s.get());
  d_lse.download(lse, H * T, s.get());
  d_ent.download(entropy, H * T, s.get());
  if (K > 0) {
    d_tp.download(top_pos, H * T * K, s.get());
    d_tw.download(top_w, H * T * K, s.get());
  }
  s.sync();
}

void prompt_colsums(const float* q, const float* k, const double* lse, int64_t H, int64_t Hkv, int64_t T, int64_t D,
                    int64_t P, float* colsum) {
  check_shapes(H, Hkv, T, D, 0);
  if (P < 1 || P > T)
    throw UsageError("cuda::prompt_colsums: P = " + std::to_string(P) + " outside [1, T = " + std::to_string(T) + "]");
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  Stream s;
  DeviceBuffer<float> dq, dk, dc;
  DeviceBuffer<double> dl;
  dq.upload(q, H * T * D, s.get());
  dk.upload(k, Hkv * T * D, s.get());
  dl.upload(lse, H * T, s.get());
  dc.resize(H * P);
  const int threads = 128;
  const auto blocks = static_cast<unsigned>((H * P + threads - 1) / threads);
  prompt_colsums_kernel<<<blocks, threads, 0, s.get()>>>(dq.data(), dk.data(), dl.data(), H, H / Hkv, T, D, P, scale,
                                                         dc.data());
  check_launch("prompt_colsums_kernel");
  dc.download(colsum, H * P, s.get());
  s.sync();
}

}  // namespace kvsim::cuda
