#include "traces/schema.h"

#include <cstdio>
#include <ctime>

#include "sim/base/error.h"

namespace kvsim::traces {

const char* dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
  }
  return "?";
}

DType parse_dtype(const std::string& s) {
  if (s == "float32" || s == "f32" || s == "fp32") return DType::f32;
  if (s == "float16" || s == "f16" || s == "fp16") return DType::f16;
  if (s == "bfloat16" || s == "bf16") return DType::bf16;
  throw UsageError("unknown dtype '" + s + "' (choose float32, float16 or bfloat16)");
}

int dtype_bytes(DType d) { return d == DType::f32 ? 4 : 2; }

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::q: return "q";
    case Kind::k: return "k";
    case Kind::v: return "v";
    case Kind::q_pre: return "q_pre";
    case Kind::k_pre: return "k_pre";
    case Kind::o: return "o";
    case Kind::vo_norm: return "vo_norm";
    case Kind::kvzip_score: return "kvzip_score";
  }
  return "?";
}

void TraceHeader::validate(const std::string& where) const {
  auto range = [&](const char* name, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
      throw FormatError(where + ": attribute " + name + " = " + std::to_string(v) + " is outside [" +
                        std::to_string(lo) + ", " + std::to_string(hi) + "]");
  };
  range("n_layers", n_layers, 1, kMaxLayers);
  range("n_heads", n_heads, 1, kMaxHeads);
  range("n_kv_heads", n_kv_heads, 1, kMaxHeads);
  range("head_dim", head_dim, 1, kMaxHeadDim);
  range("vocab_size", vocab_size, 0, int64_t{1} << 31);
  if (n_heads % n_kv_heads != 0)
    throw FormatError(where + ": n_heads = " + std::to_string(n_heads) +
                      " is not a multiple of n_kv_heads = " + std::to_string(n_kv_heads));
  if (rope_style != "interleaved" && rope_style != "half" && rope_style != "none")
    throw FormatError(where + ": attribute rope_style = '" + rope_style + "' (expected interleaved, half or none)");
  if (architecture != "llama" && architecture != "gpt2" && architecture != "synthetic")
    throw FormatError(where + ": attribute architecture = '" + architecture + "' (expected llama, gpt2 or synthetic)");
}

std::string iso8601_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string sequence_name(int64_t index) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%04lld", static_cast<long long>(index));
  return buf;
}

}  // namespace kvsim::traces
