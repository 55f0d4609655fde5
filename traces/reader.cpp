#include "traces/reader.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "sim/base/error.h"
#include "sim/base/half.h"
#include "sim/base/regular_file.h"
#include "traces/h5.h"

namespace kvsim::traces {

namespace fs = std::filesystem;

struct TraceReader::Impl {
  h5::Handle file;
};

namespace {

const Kind kAllKinds[] = {Kind::q,     Kind::k, Kind::v,       Kind::q_pre,
                          Kind::k_pre, Kind::o, Kind::vo_norm, Kind::kvzip_score};

std::vector<std::string> child_names(hid_t group) {
  std::vector<std::string> names;
  H5G_info_t info;
  if (H5Gget_info(group, &info) < 0) return names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    ssize_t n = H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    if (n < 0) continue;
    std::string s(static_cast<size_t>(n), '\0');
    H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, s.data(), static_cast<size_t>(n) + 1, H5P_DEFAULT);
    names.push_back(s);
  }
  return names;
}

// f16 -> f32 for all 65536 patterns: widening through a table is ~3x faster than the branchy
// scalar conversion and exact by construction (the table is that conversion).
const float* f16_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) t[i] = f16_to_f32(static_cast<uint16_t>(i));
    return t;
  }();
  return table.data();
}

bool in_range(float x) { return std::fabs(x) <= kMaxAbsValue; }  // false for NaN
// A score (vo_norm, kvzip_score) is also never negative; kvzip_score is at most 1.
bool in_range(Kind kind, float x) { return kind_is_score(kind) ? x >= 0 && x <= kind_max(kind) : in_range(x); }

// f16 -> f32 of n words: the CPU's conversion instruction where the build has it (-march with F16C:
// exact, as the table, for every finite, subnormal and infinite value; NaNs stay NaNs, refused
// after), else the table.
void widen_f16(const uint16_t* in, float* out, size_t n) {
  size_t i = 0;
#if defined(__F16C__)  // 8 lanes (GCC 12's 16-lane _mm512_cvtph_ps trips -Wmaybe-uninitialized)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
#endif
  const float* table = f16_table();
  for (; i < n; ++i) out[i] = table[in[i]];
}

// How many of n floats fall outside |x| <= kMaxAbsValue (NaN included): a branch-free count the
// compiler vectorises; the rare caller that finds some then looks for the first.
size_t count_out_of_range(const float* x, size_t n) {
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad += !(std::fabs(x[i]) <= kMaxAbsValue);
  return bad;
}
size_t count_out_of_range(Kind kind, const float* x, size_t n) {
  if (!kind_is_score(kind)) return count_out_of_range(x, n);
  const float hi = kind_max(kind);
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad += !(x[i] >= 0 && x[i] <= hi);
  return bad;
}

std::string value_str(float x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(x));
  return buf;
}

std::string dataset_path(const std::string& seq, int64_t layer, Kind kind) {
  return "/sequences/" + seq + "/layers/" + std::to_string(layer) + "/" + kind_name(kind);
}

}  // namespace

TraceReader::TraceReader(const std::string& path) : path_(path), impl_(std::make_unique<Impl>()) {
  h5::quiet();
  std::error_code ec;
  if (!fs::exists(path, ec)) throw UsageError(path + ": no such file");
  if (fs::is_directory(path, ec)) throw UsageError(path + ": is a directory, expected a trace file");
  require_regular_file(path, "trace");  // before H5Fis_hdf5, which would block on a FIFO
  file_bytes_ = fs::file_size(path, ec);
  const std::string fname = fs::path(path).filename().string();
  if (fname.size() >= 8 && fname.compare(fname.size() - 8, 8, ".partial") == 0)
    throw FormatError(path +
                      ": a .partial file is a trace still being written or left by a killed writer; only "
                      "the renamed file (without .partial) is a trace");
  if (H5Fis_hdf5(path.c_str()) <= 0)
    throw FormatError(path + ": not an HDF5 file (" + std::to_string(file_bytes_) + " bytes, no HDF5 signature)");
  impl_->file = h5::Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  if (!impl_->file.valid())
    throw FormatError(path + ": HDF5 signature present but the file cannot be opened (truncated or corrupt, " +
                      std::to_string(file_bytes_) + " bytes)");
  hid_t f = impl_->file;
  const std::string root = path + ": /";

  std::string format = h5::read_str_attr(f, "format", root);
  if (format != kFormatName) throw FormatError(root + ": format = '" + format + "', expected '" + kFormatName + "'");
  int64_t version = h5::read_int_attr(f, "format_version", root);
  if (version != kFormatVersion)
    throw FormatError(root + ": format_version = " + std::to_string(version) + " but this kvsim reads version " +
                      std::to_string(kFormatVersion) +
                      (version > kFormatVersion ? " (newer file: upgrade kvsim)" : ""));
  int64_t complete = h5::read_int_attr(f, "complete", root);
  if (complete != 1)
    throw FormatError(root + ": complete = " + std::to_string(complete) +
                      ": the trace was not finished (writer interrupted?)");

  TraceHeader& h = header_;
  h.model = h5::read_str_attr(f, "model", root);
  h.architecture = h5::read_str_attr(f, "architecture", root);
  h.n_layers = h5::read_int_attr(f, "n_layers", root);
  h.n_heads = h5::read_int_attr(f, "n_heads", root);
  h.n_kv_heads = h5::read_int_attr(f, "n_kv_heads", root);
  h.head_dim = h5::read_int_attr(f, "head_dim", root);
  h.vocab_size = h5::read_int_attr(f, "vocab_size", root);
  h.rope_theta = h5::read_float_attr(f, "rope_theta", root);
  h.rope_style = h5::read_str_attr(f, "rope_style", root);
  std::string dt = h5::read_str_attr(f, "stored_dtype", root);
  if (dt != "float32" && dt != "float16" && dt != "bfloat16")
    throw FormatError(root + ": stored_dtype = '" + dt + "' (expected float32, float16 or bfloat16)");
  h.stored_dtype = parse_dtype(dt);
  h.recorder = h5::read_str_attr(f, "recorder", root);
  h.device = h5::read_str_attr(f, "device", root);
  h.synthetic = h5::read_int_attr(f, "synthetic", root) != 0;
  h.created = h5::read_str_attr(f, "created", root);
  h.complete = true;
  h.validate(root);

  if (!h5::has_link(f, "/sequences")) throw FormatError(path + ": /sequences: group missing");
  h5::require_hard_links(f, "/sequences", path + ": /sequences");
  h5::Handle seqs(H5Gopen2(f, "/sequences", H5P_DEFAULT));
  if (!seqs.valid()) throw FormatError(path + ": /sequences: not a group");
  const std::vector<std::string> names = child_names(seqs);
  if (names.empty()) throw FormatError(path + ": /sequences: the trace holds no sequences");

  for (const std::string& name : names) {
    const std::string gpath = "/sequences/" + name;
    const std::string where = path + ": " + gpath;
    h5::require_hard_links(f, gpath, where);
    h5::Handle g(H5Gopen2(f, gpath.c_str(), H5P_DEFAULT));
    if (!g.valid()) throw FormatError(where + ": not a group");
    SequenceInfo s;
    s.name = name;
    s.n_tokens = h5::read_int_attr(g, "n_tokens", where);
    s.prefill_len = h5::read_int_attr(g, "prefill_len", where);
    s.source = h5::has_attr(g, "source") ? h5::read_str_attr(g, "source", where) : "";
    if (h5::has_attr(g, "context_len")) s.context_len = h5::read_int_attr(g, "context_len", where);
    if (h5::has_attr(g, "kvzip_context")) s.kvzip_context = h5::read_int_attr(g, "kvzip_context", where);
    if (h5::has_attr(g, "needle_start") || h5::has_attr(g, "needle_end")) {
      s.needle_start = h5::read_int_attr(g, "needle_start", where);
      s.needle_end = h5::read_int_attr(g, "needle_end", where);
    }
    const int64_t T = s.n_tokens, D = h.head_dim;
    if (T < 1) throw FormatError(where + ": n_tokens = " + std::to_string(T) + ": the sequence is empty");
    if (T > kMaxTokens)
      throw FormatError(where + ": n_tokens = " + std::to_string(T) + " exceeds the limit " +
                        std::to_string(kMaxTokens));
    if (T * D > kMaxHeadElements)
      throw FormatError(where + ": one head would hold n_tokens x head_dim = " + std::to_string(T) + " x " +
                        std::to_string(D) + " elements, over the limit " + std::to_string(kMaxHeadElements));
    if (s.prefill_len < 0 || s.prefill_len > T)
      throw FormatError(where + ": prefill_len = " + std::to_string(s.prefill_len) +
                        " is outside [0, n_tokens = " + std::to_string(T) + "]");
    if (s.context_len != -1 && (s.context_len < 1 || s.context_len > s.prefill_len))
      throw FormatError(where + ": context_len = " + std::to_string(s.context_len) +
                        " is outside [1, prefill_len = " + std::to_string(s.prefill_len) + "]");
    if (s.kvzip_context != -1 && (s.kvzip_context < 1 || s.kvzip_context >= T))
      throw FormatError(where + ": kvzip_context = " + std::to_string(s.kvzip_context) +
                        " is outside [1, n_tokens = " + std::to_string(T) + ")");
    if (s.needle_start != -1 &&
        !(s.needle_start >= 0 && s.needle_start < s.needle_end && s.needle_end <= s.prefill_len))
      throw FormatError(where + ": needle [" + std::to_string(s.needle_start) + ", " + std::to_string(s.needle_end) +
                        ") is not a span inside the prompt [0, prefill_len = " + std::to_string(s.prefill_len) + ")");
    if (!h5::has_link(g, "tokens")) throw FormatError(where + "/tokens: dataset missing");
    h5::require_hard_links(g, "tokens", where + "/tokens");
    {
      h5::Handle d(H5Dopen2(g, "tokens", H5P_DEFAULT));
      if (!d.valid()) throw FormatError(where + "/tokens: not a dataset");
      auto dims = h5::dataset_dims(d);
      if (dims.size() != 1 || static_cast<int64_t>(dims[0]) != T)
        throw ShapeMismatch(where + "/tokens: shape " + shape_str(dims) + " but n_tokens = " + std::to_string(T));
      h5::Handle t(H5Dget_type(d));
      if (H5Tget_class(t) != H5T_INTEGER)
        throw FormatError(where + "/tokens: dtype class " + h5::class_name(H5Tget_class(t)) + ", expected integer");
      h5::require_stored_inside(d, where + "/tokens", kMaxChunkBytes);
    }
    s.has_text = h5::has_link(g, "text");
    if (s.has_text) {
      h5::require_hard_links(g, "text", where + "/text");
      h5::Handle d(H5Dopen2(g, "text", H5P_DEFAULT));
      if (!d.valid()) throw FormatError(where + "/text: not a dataset");
      h5::require_stored_inside(d, where + "/text", kMaxChunkBytes);
      h5::Handle ft(H5Dget_type(d));
      if (H5Tget_class(ft) != H5T_STRING) throw FormatError(where + "/text: not a string");
      h5::check_string_type(ft, UINT64_MAX, where + "/text");  // a fixed length is bounded by the storage check above
    }

    if (!h5::has_link(g, "layers")) throw FormatError(where + "/layers: group missing");
    h5::require_hard_links(g, "layers", where + "/layers");
    h5::Handle lg(H5Gopen2(g, "layers", H5P_DEFAULT));
    for (const std::string& ln : child_names(lg)) {
      char* end = nullptr;
      long idx = std::strtol(ln.c_str(), &end, 10);
      if (end == ln.c_str() || *end != '\0' || idx < 0 || idx >= h.n_layers || std::to_string(idx) != ln)
        throw ShapeMismatch(where + "/layers/" + ln +
                            ": unexpected layer group (n_layers = " + std::to_string(h.n_layers) + ")");
    }
    for (Kind kind : kAllKinds) {
      bool in_all = true, in_any = false;
      for (int64_t l = 0; l < h.n_layers; ++l) {
        if (!h5::has_link(lg, std::to_string(l)))
          throw FormatError(where + "/layers/" + std::to_string(l) +
                            ": layer missing (n_layers = " + std::to_string(h.n_layers) + ")");
        const std::string dp = dataset_path(name, l, kind);
        h5::require_hard_links(lg, std::to_string(l), where + "/layers/" + std::to_string(l));
        bool present = h5::has_link(f, dp);
        in_all = in_all && present;
        in_any = in_any || present;
        if (!present) continue;
        h5::require_hard_links(f, dp, path + ": " + dp);
        h5::Handle d(H5Dopen2(f, dp.c_str(), H5P_DEFAULT));
        if (!d.valid()) throw FormatError(path + ": " + dp + ": not a dataset");
        auto dims = h5::dataset_dims(d);
        const int64_t heads = h.heads_of(kind);
        std::vector<hsize_t> want = {static_cast<hsize_t>(heads), static_cast<hsize_t>(T), static_cast<hsize_t>(D)};
        if (kind_rank(kind) == 2) want.pop_back();  // vo_norm [H, T], kvzip_score [Hkv, T]
        if (dims != want)
          throw ShapeMismatch(path + ": " + dp + ": shape " + shape_str(dims) + " but expected " + shape_str(want) +
                              " from " + (kind_is_query_shaped(kind) ? "n_heads" : "n_kv_heads") + " = " +
                              std::to_string(heads) + ", n_tokens = " + std::to_string(T) +
                              (kind_rank(kind) == 3 ? ", head_dim = " + std::to_string(D) : std::string()));
        h5::Handle t(H5Dget_type(d));
        H5T_class_t c = H5Tget_class(t);
        if (c != H5T_FLOAT)
          throw FormatError(path + ": " + dp + ": dtype class " + h5::class_name(c) + ", expected float");
        size_t bytes = H5Tget_size(t);
        if (static_cast<int>(bytes) != dtype_bytes(h.stored_dtype))
          throw FormatError(path + ": " + dp + ": " + std::to_string(bytes) +
                            "-byte floats but stored_dtype = " + dtype_name(h.stored_dtype));
        h5::require_stored_inside(d, path + ": " + dp, kMaxChunkBytes);
      }
      if (kind == Kind::q || kind == Kind::k || kind == Kind::v) {
        if (!in_all) {
          for (int64_t l = 0; l < h.n_layers; ++l)
            if (!h5::has_link(f, dataset_path(name, l, kind)))
              throw FormatError(path + ": " + dataset_path(name, l, kind) + ": dataset missing");
        }
      } else if (in_any && !in_all) {
        throw FormatError(where + ": optional tensor '" + kind_name(kind) + "' is present in some layers only");
      }
      if (in_all) s.kinds.push_back(kind);
    }
    const bool kvzip = std::find(s.kinds.begin(), s.kinds.end(), Kind::kvzip_score) != s.kinds.end();
    if (kvzip && s.kvzip_context == -1)
      throw FormatError(where + ": kvzip_score without the kvzip_context attribute (the tokens it scores)");
    sequences_.push_back(std::move(s));
  }
}

TraceReader::~TraceReader() = default;
TraceReader::TraceReader(TraceReader&&) noexcept = default;
TraceReader& TraceReader::operator=(TraceReader&&) noexcept = default;

const SequenceInfo& TraceReader::sequence(int64_t index) const {
  if (index < 0 || index >= static_cast<int64_t>(sequences_.size()))
    throw UsageError(path_ + ": sequence index " + std::to_string(index) + " out of range [0, " +
                     std::to_string(sequences_.size()) + ")");
  return sequences_[static_cast<size_t>(index)];
}

int64_t TraceReader::find_sequence(const std::string& name) const {
  for (size_t i = 0; i < sequences_.size(); ++i)
    if (sequences_[i].name == name) return static_cast<int64_t>(i);
  throw UsageError(path_ + ": no sequence named '" + name + "'");
}

bool TraceReader::has(int64_t seq, Kind kind) const {
  const auto& k = sequence(seq).kinds;
  return std::find(k.begin(), k.end(), kind) != k.end();
}

std::vector<int32_t> TraceReader::tokens(int64_t seq) const {
  const SequenceInfo& s = sequence(seq);
  std::vector<int32_t> out(static_cast<size_t>(s.n_tokens));
  const std::string dp = "/sequences/" + s.name + "/tokens";
  h5::Handle d(H5Dopen2(impl_->file, dp.c_str(), H5P_DEFAULT));
  if (!d.valid() || H5Dread(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
    throw FormatError(path_ + ": " + dp + ": read failed");
  return out;
}

std::string TraceReader::text(int64_t seq) const {
  const SequenceInfo& s = sequence(seq);
  if (!s.has_text) return "";
  const std::string dp = "/sequences/" + s.name + "/text";
  h5::Handle d(H5Dopen2(impl_->file, dp.c_str(), H5P_DEFAULT));
  h5::Handle ft(H5Dget_type(d));
  if (H5Tget_class(ft) != H5T_STRING) throw FormatError(path_ + ": " + dp + ": not a string");
  h5::Handle space(H5Dget_space(d));
  if (H5Sget_simple_extent_npoints(space) != 1) throw FormatError(path_ + ": " + dp + ": not a scalar string");
  if (H5Tis_variable_str(ft) > 0) {
    h5::check_vlen_string(d, path_ + ": " + dp);
    h5::Handle mt(H5Tcopy(H5T_C_S1));
    H5Tset_size(mt, H5T_VARIABLE);
    H5Tset_cset(mt, H5Tget_cset(ft));
    char* p = nullptr;
    if (H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, &p) < 0) throw FormatError(path_ + ": " + dp + ": read failed");
    std::string out = p ? p : "";
    H5Dvlen_reclaim(mt, space, H5P_DEFAULT, &p);
    return out;
  }
  std::string out(H5Tget_size(ft), '\0');
  h5::Handle mt(H5Tcopy(ft));
  if (H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
    throw FormatError(path_ + ": " + dp + ": read failed");
  out.resize(std::min(out.size(), out.find('\0')));
  return out;
}

void TraceReader::read_raw(int64_t seq, int64_t layer, Kind kind, int64_t head0, int64_t n_heads, int64_t t0,
                           int64_t n_tok, float* out) const {
  const SequenceInfo& s = sequence(seq);
  const int64_t heads = header_.heads_of(kind), T = s.n_tokens, D = header_.head_dim;
  const int64_t W = kind_width(kind, D);
  const int rank = kind_rank(kind);
  if (!has(seq, kind)) throw UsageError(path_ + ": sequence " + s.name + " has no '" + kind_name(kind) + "' tensors");
  if (layer < 0 || layer >= header_.n_layers || head0 < 0 || n_heads < 1 || head0 + n_heads > heads || t0 < 0 ||
      n_tok < 1 || t0 + n_tok > T)
    throw UsageError(path_ + ": read of layer " + std::to_string(layer) + ", heads [" + std::to_string(head0) + ", " +
                     std::to_string(head0 + n_heads) + "), tokens [" + std::to_string(t0) + ", " +
                     std::to_string(t0 + n_tok) + ") is outside " +
                     shape_str(rank == 2 ? std::vector<int64_t>{heads, T} : std::vector<int64_t>{heads, T, D}));
  const std::string dp = dataset_path(s.name, layer, kind);
  h5::Handle d(H5Dopen2(impl_->file, dp.c_str(), H5P_DEFAULT));
  if (!d.valid()) throw FormatError(path_ + ": " + dp + ": cannot open");
  hsize_t start[3] = {static_cast<hsize_t>(head0), static_cast<hsize_t>(t0), 0};
  hsize_t count[3] = {static_cast<hsize_t>(n_heads), static_cast<hsize_t>(n_tok), static_cast<hsize_t>(D)};
  h5::Handle fspace(H5Dget_space(d));
  H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, nullptr, count, nullptr);
  h5::Handle mspace(H5Screate_simple(rank, count, nullptr));
  h5::Handle ft(H5Dget_type(d));
  const size_t n = static_cast<size_t>(n_heads * n_tok * W);
  herr_t rc;
  switch (h5::float_layout(ft)) {
    case h5::FloatLayout::f16:
    case h5::FloatLayout::bf16: {
      // Read the raw 16-bit words (no library conversion) and widen them ourselves, in place
      // from the back of the float buffer.
      uint16_t* raw = reinterpret_cast<uint16_t*>(out) + n;
      h5::Handle mt(H5Tcopy(ft));
      rc = H5Dread(d, mt, mspace, fspace, H5P_DEFAULT, raw);
      if (rc >= 0) {
        if (h5::float_layout(ft) == h5::FloatLayout::f16) {
          widen_f16(raw, out, n);
        } else {
          for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(raw[i]);
        }
      }
      break;
    }
    default: rc = H5Dread(d, H5T_NATIVE_FLOAT, mspace, fspace, H5P_DEFAULT, out);
  }
  if (rc < 0) throw FormatError(path_ + ": " + dp + ": read failed (truncated or corrupt data?)");
}

void TraceReader::read_block(int64_t seq, int64_t layer, Kind kind, int64_t head0, int64_t n_heads, int64_t t0,
                             int64_t n_tok, float* out) const {
  read_raw(seq, layer, kind, head0, n_heads, t0, n_tok, out);
  const int64_t D = kind_width(kind, header_.head_dim), n = n_heads * n_tok * D;
  if (count_out_of_range(kind, out, static_cast<size_t>(n)) == 0) return;
  for (int64_t i = 0; i < n; ++i) {
    if (in_range(kind, out[i])) continue;
    const int64_t head = head0 + i / (n_tok * D), token = t0 + (i / D) % n_tok, dim = i % D;
    const std::string where = path_ + ": " + dataset_path(sequence(seq).name, layer, kind) + ": value " +
                              value_str(out[i]) + " at [head " + std::to_string(head) + ", token " +
                              std::to_string(token);
    if (kind == Kind::vo_norm)
      throw NumericError(where + "]: vo_norm holds L1 norms, finite with 0 <= x <= " + value_str(kMaxAbsValue) +
                         " (traces/FORMAT.md)");
    if (kind == Kind::kvzip_score)
      throw NumericError(where + "]: kvzip_score holds attention probabilities, 0 <= x <= 1 (traces/FORMAT.md)");
    throw NumericError(where + ", dim " + std::to_string(dim) +
                       "]: a trace holds finite values with |x| <= " + value_str(kMaxAbsValue) + " (traces/FORMAT.md)");
  }
}

xt::xtensor<float, 2> TraceReader::read_head(int64_t seq, int64_t layer, Kind kind, int64_t head) const {
  const int64_t T = sequence(seq).n_tokens, D = kind_width(kind, header_.head_dim);
  xt::xtensor<float, 2> out({static_cast<size_t>(T), static_cast<size_t>(D)});
  read_block(seq, layer, kind, head, 1, 0, T, out.data());
  return out;
}

xt::xtensor<float, 2> TraceReader::read_vo_norm(int64_t seq, int64_t layer) const {
  const int64_t T = sequence(seq).n_tokens, H = header_.n_heads;
  xt::xtensor<float, 2> out({static_cast<size_t>(H), static_cast<size_t>(T)});
  read_block(seq, layer, Kind::vo_norm, 0, H, 0, T, out.data());
  return out;
}

xt::xtensor<float, 2> TraceReader::read_kvzip_score(int64_t seq, int64_t layer) const {
  const SequenceInfo& si = sequence(seq);
  const int64_t T = si.n_tokens, Hkv = header_.n_kv_heads, C = si.kvzip_context;
  xt::xtensor<float, 2> out({static_cast<size_t>(Hkv), static_cast<size_t>(T)});
  read_block(seq, layer, Kind::kvzip_score, 0, Hkv, 0, T, out.data());
  for (int64_t kv = 0; kv < Hkv; ++kv)  // only the context is scored: a later token holds 0
    for (int64_t i = C; i < T; ++i)
      if (out(kv, i) != 0)
        throw FormatError(path_ + ": " + dataset_path(si.name, layer, Kind::kvzip_score) + ": value " +
                          value_str(out(kv, i)) + " at [head " + std::to_string(kv) + ", token " + std::to_string(i) +
                          "] after the scored context of kvzip_context = " + std::to_string(C) +
                          " tokens must be 0 (traces/FORMAT.md)");
  return out;
}

xt::xtensor<float, 3> TraceReader::read_layer(int64_t seq, int64_t layer, Kind kind) const {
  const int64_t T = sequence(seq).n_tokens, D = kind_width(kind, header_.head_dim), heads = header_.heads_of(kind);
  xt::xtensor<float, 3> out({static_cast<size_t>(heads), static_cast<size_t>(T), static_cast<size_t>(D)});
  read_block(seq, layer, kind, 0, heads, 0, T, out.data());
  return out;
}

std::vector<NonFinite> TraceReader::check_finite() const {
  // Streams one head by whole chunks of tokens at a time (256-token blocks when not chunked), about
  // 4 MiB per read: memory stays bounded whatever T and D are, and each chunk is inflated once per
  // head it holds.
  std::vector<NonFinite> found;
  std::vector<float> buf;
  for (int64_t s = 0; s < static_cast<int64_t>(sequences_.size()); ++s) {
    const SequenceInfo& si = sequences_[static_cast<size_t>(s)];
    const int64_t T = si.n_tokens;
    for (int64_t l = 0; l < header_.n_layers; ++l) {
      for (Kind kind : si.kinds) {
        const int64_t D = kind_width(kind, header_.head_dim);
        const std::string dp = dataset_path(si.name, l, kind);
        // Whole chunks, as many as fit in 4 MiB (fewer reads of small chunks), at least one.
        const int64_t chunk = block_tokens(dp);
        const int64_t step = std::min(T, chunk * std::max<int64_t>(1, (int64_t{4} << 20) / (4 * D * chunk)));
        buf.resize(static_cast<size_t>(step * D));
        NonFinite nf;
        for (int64_t h = 0; h < header_.heads_of(kind); ++h) {
          for (int64_t t0 = 0; t0 < T; t0 += step) {
            const int64_t n_tok = std::min(step, T - t0);
            read_raw(s, l, kind, h, 1, t0, n_tok, buf.data());
            if (count_out_of_range(kind, buf.data(), static_cast<size_t>(n_tok * D)) == 0) continue;
            for (int64_t i = 0; i < n_tok * D; ++i) {
              if (in_range(kind, buf[static_cast<size_t>(i)])) continue;
              if (nf.count++ == 0) {
                nf.dataset = dp;
                nf.head = h;
                nf.token = t0 + i / D;
                nf.dim = i % D;
                nf.value = buf[static_cast<size_t>(i)];
              }
            }
          }
        }
        if (nf.count > 0) found.push_back(nf);
      }
    }
  }
  return found;
}

int64_t TraceReader::block_tokens(const std::string& dp) const {
  h5::Handle d(H5Dopen2(impl_->file, dp.c_str(), H5P_DEFAULT));
  h5::Handle dcpl(H5Dget_create_plist(d));
  hsize_t chunk[3] = {0, 0, 0};
  if (dcpl.valid() && H5Pget_layout(dcpl) == H5D_CHUNKED && H5Pget_chunk(dcpl, 3, chunk) >= 2 && chunk[1] > 0)
    return static_cast<int64_t>(chunk[1]);
  return kChunkTokens;
}

}  // namespace kvsim::traces
