// Quantization kernels behind the cache codecs (design.md §5: quant, kivi, nf4): the contract once,
// declared for every backend. The arithmetic is written once, as work items in
// sim/kernels/quant_core.h: ref (sim/kernels/ref/quant.cpp) runs them serially and is the ground
// truth; the omp (sim/kernels/omp/quant.cpp) and cuda (cuda/quant.cu, host pointers; the
// device-pointer forms are in cuda/quant.h) twins run the same items and have the same results bit for bit.
//
// Layout: a tile x is [n_t, D] row-major (tokens x channels). Blocks share quantization
// parameters:
//   uniform, axis = token:   block = 1 token x `group` channels      (per-token, KIVI values)
//   uniform, axis = channel: block = `group` tokens x 1 channel      (per-channel, KIVI keys)
//   nf4:                     block = 64 consecutive elements of the row-major tile (axis = token)
//                            or of its column-major order (axis = channel)
// Uniform asymmetric b-bit: min and scale = (max - min) / (2^b - 1) are stored in fp16 (rounded
// before the codes are computed, so encoder and decoder agree); code = clamp(floor((x - min) /
// scale + 0.5), 0, 2^b - 1); x^ = code * scale + min. A block whose fp16 scale is 0 decodes to min.
// NF4 (QLoRA, arXiv 2305.14314): absmax per block; code = index of the nearest NormalFloat-4 value
// to x / absmax (ties to the lower index); x^ = nf4[code] * absmax. Double quantization stores the
// absmax values minus their mean as 8-bit symmetric linear codes in blocks of 256, with one fp32
// scale per 256 blocks and one fp32 mean per tile.
#pragma once

#include <cstdint>
#include <vector>

namespace kvsim {

enum class QuantAxis { token, channel };

// The 16 NormalFloat-4 values (QLoRA, Appendix E), ascending.
extern const float kNf4Values[16];

// Packed codes: `bits` per element, little-endian within bytes, in block order.
struct UniformQuantized {
  int bits = 4;
  QuantAxis axis = QuantAxis::token;
  int64_t group = 32, n_t = 0, D = 0;
  std::vector<uint8_t> codes;       // ceil(n_t * D * bits / 8) bytes
  std::vector<uint16_t> scale_f16;  // one per block
  std::vector<uint16_t> min_f16;    // one per block
};

struct Nf4Quantized {
  QuantAxis axis = QuantAxis::token;
  int64_t block = 64, n_t = 0, D = 0;
  bool double_quant = false;
  std::vector<uint8_t> codes;    // two 4-bit codes per byte
  std::vector<float> absmax;     // one per block (without double quantization)
  std::vector<int8_t> absmax_q;  // one per block (with double quantization)
  std::vector<float> dq_scale;   // one per 256 blocks
  float dq_mean = 0;
};

// Physical bytes of each representation (payload, scales, zero points, second-level scales).
int64_t uniform_bytes(int64_t n_elements, int bits, int64_t group);
int64_t nf4_bytes(int64_t n_elements, int64_t block, bool double_quant);

// x: [n_t, D]. axis = token needs D % group == 0; axis = channel needs n_t % group == 0.
using QuantUniform = UniformQuantized(const float* x, int64_t n_t, int64_t D, int bits, QuantAxis axis, int64_t group);
using DequantUniform = void(const UniformQuantized& q, float* y);  // y: [n_t, D]
// x: [n_t, D], n_t * D % block == 0.
using QuantNf4 = Nf4Quantized(const float* x, int64_t n_t, int64_t D, QuantAxis axis, int64_t block, bool double_quant);
using DequantNf4 = void(const Nf4Quantized& q, float* y);  // y: [n_t, D]

#define KVSIM_DECLARE_QUANT_KERNELS \
  QuantUniform quant_uniform;       \
  DequantUniform dequant_uniform;   \
  QuantNf4 quant_nf4;               \
  DequantNf4 dequant_nf4;
namespace ref {
KVSIM_DECLARE_QUANT_KERNELS
}  // namespace ref
namespace omp {
KVSIM_DECLARE_QUANT_KERNELS
}  // namespace omp
namespace cuda {  // NotCompiled without CUDA; CudaError when the device fails
KVSIM_DECLARE_QUANT_KERNELS
}  // namespace cuda
#undef KVSIM_DECLARE_QUANT_KERNELS

// ---- fp8 and int8 (the fp8 and int8 codecs): ref and omp; no CUDA twins yet ------------------------
// fp8 (e4m3fn, e5m2): one byte per element, code = round to nearest even of x / s saturated at the
// format's max, x^ = decode(code) * s, s a float32 scale per tile or per token (per_token: s_t =
// max |x_t| / max, computed by the kernel; 1 for an all-zero token). int8: symmetric, one fp16 scale
// per group of `group` channels of a token (s = max |x| / 127 rounded to fp16 first), code =
// clamp(rint(x / s), -127, 127), x^ = code * s.
enum class Fp8Format { e4m3, e5m2 };

struct Fp8Quantized {
  Fp8Format format = Fp8Format::e4m3;
  bool per_token = false;
  int64_t n_t = 0, D = 0;
  std::vector<uint8_t> codes;  // [n_t, D]
  std::vector<float> scale;    // [n_t] per token, else [1]
};

struct Int8Quantized {
  int64_t group = 0, n_t = 0, D = 0;
  std::vector<int8_t> codes;        // [n_t, D]
  std::vector<uint16_t> scale_f16;  // [n_t * D / group]
};

// x: [n_t, D]; scale: the tile's scale (> 0), or nullptr for per-token scales.
using QuantFp8 = Fp8Quantized(const float* x, int64_t n_t, int64_t D, Fp8Format format, const float* scale);
using DequantFp8 = void(const Fp8Quantized& q, float* y);  // y: [n_t, D]
// x: [n_t, D], D % group == 0.
using QuantInt8 = Int8Quantized(const float* x, int64_t n_t, int64_t D, int64_t group);
using DequantInt8 = void(const Int8Quantized& q, float* y);  // y: [n_t, D]

#define KVSIM_DECLARE_QUANT8_KERNELS \
  QuantFp8 quant_fp8;                \
  DequantFp8 dequant_fp8;            \
  QuantInt8 quant_int8;              \
  DequantInt8 dequant_int8;
namespace ref {
KVSIM_DECLARE_QUANT8_KERNELS
}  // namespace ref
namespace omp {
KVSIM_DECLARE_QUANT8_KERNELS
}  // namespace omp
#undef KVSIM_DECLARE_QUANT8_KERNELS
}  // namespace kvsim
