// Trace format v1 (design.md §2, traces/FORMAT.md): the in-memory view of a trace's root and
// sequence attributes, shared by the reader, the writer, the synthetic generator and the recorder.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvsim::traces {

inline constexpr const char* kFormatName = "kvtrace";
inline constexpr int kFormatVersion = 1;
inline constexpr int kChunkTokens = 256;  // chunk = [1 head, up to 256 tokens, D]

// Upper bounds a reader accepts before allocating anything; a file declaring more is rejected.
inline constexpr int64_t kMaxLayers = 4096;
inline constexpr int64_t kMaxHeads = 4096;
inline constexpr int64_t kMaxHeadDim = 4096;
inline constexpr int64_t kMaxTokens = int64_t{1} << 24;
inline constexpr int64_t kMaxHeadElements = int64_t{1} << 31;  // one [T, D] head slice
// One chunk, inflated: a standard chunk [1, 256, D] is at most 4 MiB (D = 4096 float32).
inline constexpr uint64_t kMaxChunkBytes = uint64_t{64} << 20;
// Every q/k/v value a reader hands out satisfies |x| <= kMaxAbsValue (no NaN, no inf): the largest
// finite float16, so that every trace is float16-representable, the codecs' float16 scales and
// zero points cannot overflow, and a logit q.k/sqrt(D) stays below D * 65504^2 / sqrt(D) < 3e11.
inline constexpr float kMaxAbsValue = 65504.0f;

enum class DType { f32, f16, bf16 };
const char* dtype_name(DType d);
DType parse_dtype(const std::string& s);  // throws UsageError listing the choices
int dtype_bytes(DType d);

// Tensor kinds stored per layer. Every kind is [heads, T, D] except the two per-token scores of rank 2:
// vo_norm [H, T], one non-negative number per (query head, token), ||W_o,h v_i||_1, and kvzip_score
// [Hkv, T], KVzip's reconstruction attention of each context token, in [0, 1] (traces/FORMAT.md).
enum class Kind { q, k, v, q_pre, k_pre, o, vo_norm, kvzip_score };
const char* kind_name(Kind k);
inline bool kind_is_query_shaped(Kind k) {
  return k == Kind::q || k == Kind::q_pre || k == Kind::o || k == Kind::vo_norm;
}
inline bool kind_is_score(Kind k) { return k == Kind::vo_norm || k == Kind::kvzip_score; }
// Values per (head, token): D, or 1 for a score (whose dataset has rank 2).
inline int64_t kind_width(Kind k, int64_t D) { return kind_is_score(k) ? 1 : D; }
inline int kind_rank(Kind k) { return kind_is_score(k) ? 2 : 3; }
// The range a value of kind k must lie in: |x| <= kMaxAbsValue, a score >= 0 too, kvzip_score <= 1
// (an attention probability).
inline float kind_min(Kind k) { return kind_is_score(k) ? 0.0f : -kMaxAbsValue; }
inline float kind_max(Kind k) { return k == Kind::kvzip_score ? 1.0f : kMaxAbsValue; }

struct TraceHeader {
  std::string model = "unknown";
  std::string architecture = "synthetic";  // llama | gpt2 | synthetic
  int64_t n_layers = 0;
  int64_t n_heads = 0;     // H
  int64_t n_kv_heads = 0;  // Hkv
  int64_t head_dim = 0;    // D
  int64_t vocab_size = 0;
  double rope_theta = 10000.0;
  std::string rope_style = "none";  // interleaved | half | none
  DType stored_dtype = DType::f32;
  std::string recorder = "kvsim";
  std::string device = "cpu";
  bool synthetic = false;
  std::string created;  // ISO 8601, filled by the writer when empty
  bool complete = false;

  int64_t heads_of(Kind k) const { return kind_is_query_shaped(k) ? n_heads : n_kv_heads; }
  // Throws UsageError/FormatError naming `where` if dimensions are inconsistent or out of range.
  void validate(const std::string& where) const;
};

struct SequenceInfo {
  std::string name;
  int64_t n_tokens = 0;     // T
  int64_t prefill_len = 0;  // P
  // Optional: where the context ends and the question starts (traces/FORMAT.md); -1 when absent.
  // A query-agnostic run compresses at context_len, a query-aware one at prefill_len.
  int64_t context_len = -1;
  // Optional, with kvzip_score: the first kvzip_context tokens are the context its scores reconstruct.
  int64_t kvzip_context = -1;
  // Optional: a needle's tokens [needle_start, needle_end) inside the prompt; -1 when absent.
  int64_t needle_start = -1, needle_end = -1;
  std::string source;
  bool has_text = false;
  std::vector<Kind> kinds;  // tensors present in every layer (q, k, v always)
};

std::string iso8601_now();
std::string sequence_name(int64_t index);  // zero-padded: "0000"

}  // namespace kvsim::traces
