#include "tools/capacity.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "sim/base/error.h"

namespace kvsim::tools {

namespace {

// "" or "b": bytes; k, m, g, t alone or with "ib": powers of 1024; with "b": powers of 1000; -1: unknown.
double unit_scale(const std::string& u) {
  if (u.empty() || u == "b") return 1;
  const size_t p = std::string("kmgt").find(u[0]);
  if (p == std::string::npos) return -1;
  const std::string rest = u.substr(1);
  const double n = static_cast<double>(p + 1);
  if (rest.empty() || rest == "ib") return std::pow(1024.0, n);
  if (rest == "b") return std::pow(1000.0, n);
  return -1;
}

}  // namespace

int64_t parse_size(const std::string& s, const std::string& what) {
  const std::string bad =
      what + " '" + s + "': not a size (a number of bytes, or with KiB, MiB, GiB, TiB, KB, MB, GB, TB)";
  const char* p = s.c_str();
  char* end = nullptr;
  const double x = std::strtod(p, &end);
  if (end == p) throw UsageError(bad);
  std::string unit;
  for (const char* q = end; *q; ++q)
    if (*q != ' ') unit += static_cast<char>(std::tolower(static_cast<unsigned char>(*q)));
  const double scale = unit_scale(unit);
  if (scale < 0) throw UsageError(bad);
  const double bytes = x * scale;
  if (!std::isfinite(bytes) || bytes < 0) throw UsageError(what + " '" + s + "': must be a size >= 0");
  if (bytes > 4.6e18) throw UsageError(what + " '" + s + "': larger than 2^62 bytes");
  return static_cast<int64_t>(std::floor(bytes));
}

std::string size_str(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (std::fabs(bytes) >= 1024.0 && u < 4) bytes /= 1024.0, ++u;
  char buf[48];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%.0f B", bytes);
  else
    std::snprintf(buf, sizeof buf, "%.4g %s", bytes, units[u]);
  return buf;
}

int64_t kv_bytes_per_token(int64_t L, int64_t Hkv, int64_t D, int64_t bytes_per_element) {
  return 2 * L * Hkv * D * bytes_per_element;
}

int64_t parameter_count(const model::ModelConfig& c) {
  const int64_t dim = c.dim, qd = c.q_dim(), kvd = c.kv_dim(), hid = c.hidden_dim;
  const int64_t per_layer =
      2 * dim + dim * qd + 2 * dim * kvd + qd * dim + (c.qkv_bias ? qd + 2 * kvd : 0) + 3 * dim * hid;
  return c.vocab_size * dim * (c.tied_embeddings ? 1 : 2) + c.n_layers * per_layer + dim;
}

model::ModelConfig config_of_shape(const traces::SynthShape& s) {
  model::ModelConfig c;
  c.name = s.name;
  c.n_layers = s.n_layers, c.n_heads = s.n_heads, c.n_kv_heads = s.n_kv_heads, c.head_dim = s.head_dim;
  c.dim = s.n_heads * s.head_dim;
  c.hidden_dim = s.ffn_dim;
  c.vocab_size = s.vocab_size;
  c.rope_theta = s.rope_theta;
  c.rope_style = s.rope_style == "interleaved" ? RopeStyle::interleaved : RopeStyle::half;
  c.tied_embeddings = s.tied_embeddings;
  c.qkv_bias = s.qkv_bias;
  return c;
}

double weight_dtype_bytes(const std::string& dtype) {
  if (dtype == "fp32" || dtype == "float32") return 4.0;
  if (dtype == "fp16" || dtype == "float16" || dtype == "bf16" || dtype == "bfloat16") return 2.0;
  if (dtype == "int8") return 1.0;
  if (dtype == "nf4") return 4.5 / 8.0;
  throw UsageError("--weights-dtype " + dtype + ": unknown (choose fp32, fp16, bf16, int8, nf4)");
}

int64_t max_context(double available, double per_token, int64_t batch) {
  if (available <= 0) return 0;
  return static_cast<int64_t>(std::floor(available / (static_cast<double>(batch) * per_token)));
}

int64_t max_batch(double available, double per_token, int64_t context) {
  if (available <= 0) return 0;
  return static_cast<int64_t>(std::floor(available / (static_cast<double>(context) * per_token)));
}

}  // namespace kvsim::tools
