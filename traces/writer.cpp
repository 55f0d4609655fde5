#include "traces/writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

#include "sim/base/error.h"
#include "sim/base/half.h"
#include "traces/h5.h"

namespace kvsim::traces {

namespace fs = std::filesystem;

struct TraceWriter::Impl {
  h5::Handle file;
  h5::Handle file_type;  // stored dtype on disk
  h5::Handle seq_group;
  std::string seq_name;
  int64_t seq_tokens = 0;
  int64_t n_sequences = 0;
  bool finished = false;
  // (kind, layer) -> open dataset and how many elements were written into it
  struct Open {
    h5::Handle dset;
    int64_t written = 0;
    int64_t total = 0;
  };
  std::map<std::pair<int, int64_t>, Open> open;
  std::vector<uint16_t> half_buf;
  // Our descriptor of NAME.h5.partial, holding its lock from creation until the rename or the
  // removal: -1 until the partial is ours, and then only this writer may remove it.
  int partial_fd = -1;
};

namespace {

void fsync_path(const std::string& p, bool directory) {
  int fd = ::open(p.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// The HDF5 file's descriptor (the default sec2 driver exposes it), or -1.
int vfd_of(hid_t file) {
  void* handle = nullptr;
  return H5Fget_vfd_handle(file, H5P_DEFAULT, &handle) >= 0 && handle ? *static_cast<int*>(handle) : -1;
}

void sync_file(hid_t file) {
  const int fd = vfd_of(file);
  if (fd >= 0) ::fsync(fd);
}

bool same_inode(int fd_a, const struct stat& b) {
  struct stat a {};
  return ::fstat(fd_a, &a) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

// Makes `partial` ours before anything is written to it, and returns its descriptor, locked. A new
// file is created with O_EXCL | O_NOFOLLOW; an existing one is taken over only when it is a plain
// file that no live writer holds locked (a writer killed earlier left it), so a second writer on
// the same --out, or a symbolic link planted at NAME.h5.partial, is refused before any byte of the
// file (or of a link's target) changes. The lock is an open-file-description lock: it dies with its
// writer, and it is independent of the flock() that HDF5 itself takes on its own descriptor.
int claim_partial(const std::string& partial) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    int fd = ::open(partial.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    const bool created = fd >= 0;
    if (!created && errno == EEXIST) fd = ::open(partial.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
      if (errno == ENOENT) continue;  // removed between our two opens: try again
      if (errno == ELOOP)
        throw UsageError(partial +
                         ": is a symbolic link; a trace's .partial file is created afresh, never written "
                         "through a link (remove the link)");
      throw IoError(partial + ": cannot create (" + std::strerror(errno) + ")");
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1) {
      const bool regular = S_ISREG(st.st_mode);
      const auto links = static_cast<long long>(st.st_nlink);
      ::close(fd);
      throw UsageError(
          partial +
          (regular ? ": has " + std::to_string(links) + " hard links" : std::string(": is not a regular file")) +
          "; refusing to overwrite it as a trace's .partial file (remove it)");
    }
    struct flock lk {};
    lk.l_type = F_WRLCK;
    lk.l_whence = SEEK_SET;
    if (::fcntl(fd, F_OFD_SETLK, &lk) != 0) {
      const int e = errno;
      ::close(fd);
      if (e == EAGAIN || e == EACCES)
        throw UsageError(partial +
                         ": another writer is writing this trace now (its .partial file is locked); "
                         "wait for it to finish or choose another --out");
      throw IoError(partial + ": cannot lock (" + std::strerror(e) + ")");
    }
    // Locked; the name must still lead to this file (the writer we waited on renames or removes it
    // before it lets go of its lock), else start over.
    struct stat now {};
    if (::lstat(partial.c_str(), &now) != 0 || now.st_dev != st.st_dev || now.st_ino != st.st_ino) {
      ::close(fd);
      continue;
    }
    if (!created && ::ftruncate(fd, 0) != 0) {  // a killed writer's leftovers
      const int e = errno;
      ::close(fd);
      throw IoError(partial + ": cannot truncate (" + std::strerror(e) + ")");
    }
    return fd;
  }
  throw IoError(partial + ": cannot claim it (other writers keep creating and removing it)");
}

}  // namespace

TraceWriter::TraceWriter(std::string path, TraceHeader header, WriterOptions options)
    : path_(std::move(path)), header_(std::move(header)), options_(options), impl_(std::make_unique<Impl>()) {
  h5::quiet();
  header_.validate(path_);
  if (header_.created.empty()) header_.created = iso8601_now();
  if (path_.empty()) throw UsageError("--out is empty: give the trace's path (NAME.h5)");
  if (fs::is_directory(path_))  // --force replaces a trace, never a directory
    throw UsageError(path_ + ": is a directory, expected a trace path (NAME.h5)");
  if (!options_.overwrite && fs::exists(path_))
    throw UsageError(path_ + ": already exists; traces are write-once (remove it or choose another --out)");
  fs::path parent = fs::path(path_).parent_path();
  if (!parent.empty() && !fs::is_directory(parent))
    throw UsageError(path_ + ": directory " + parent.string() + " does not exist");

  impl_->partial_fd = claim_partial(partial_path());
  try {
    create_file();
  } catch (...) {
    discard();
    throw;
  }
}

void TraceWriter::create_file() {
  impl_->file = h5::Handle(H5Fcreate(partial_path().c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
  if (!impl_->file.valid()) throw IoError(partial_path() + ": cannot create (" + std::strerror(errno) + ")");
  // HDF5 opens the file by name: it must have opened the very file we claimed.
  struct stat claimed {};
  const int vfd = vfd_of(impl_->file);
  if (::fstat(impl_->partial_fd, &claimed) != 0 || vfd < 0 || !same_inode(vfd, claimed))
    throw IoError(partial_path() + ": was replaced by another file while being created");

  switch (header_.stored_dtype) {
    case DType::f32: impl_->file_type = h5::Handle(H5Tcopy(H5T_IEEE_F32LE)); break;
    case DType::f16: impl_->file_type = h5::Handle(h5::make_f16_type()); break;
    case DType::bf16: impl_->file_type = h5::Handle(h5::make_bf16_type()); break;
  }

  hid_t f = impl_->file;
  h5::write_str_attr(f, "format", kFormatName);
  h5::write_int_attr(f, "format_version", kFormatVersion);
  h5::write_str_attr(f, "model", header_.model);
  h5::write_str_attr(f, "architecture", header_.architecture);
  h5::write_int_attr(f, "n_layers", header_.n_layers);
  h5::write_int_attr(f, "n_heads", header_.n_heads);
  h5::write_int_attr(f, "n_kv_heads", header_.n_kv_heads);
  h5::write_int_attr(f, "head_dim", header_.head_dim);
  h5::write_int_attr(f, "vocab_size", header_.vocab_size);
  h5::write_float_attr(f, "rope_theta", header_.rope_theta);
  h5::write_str_attr(f, "rope_style", header_.rope_style);
  h5::write_str_attr(f, "stored_dtype", dtype_name(header_.stored_dtype));
  h5::write_str_attr(f, "recorder", header_.recorder);
  h5::write_str_attr(f, "device", header_.device);
  h5::write_int_attr(f, "synthetic", header_.synthetic ? 1 : 0);
  h5::write_str_attr(f, "created", header_.created);
  h5::write_int_attr(f, "complete", 0);
  h5::Handle g(H5Gcreate2(f, "sequences", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  if (!g.valid()) throw IoError(partial_path() + ": cannot create /sequences");
}

TraceWriter::~TraceWriter() {
  if (impl_ && !impl_->finished) discard();
}

void TraceWriter::discard() {
  impl_->open.clear();
  impl_->seq_group.reset();
  impl_->file.reset();
  // Only the partial this writer claimed is removed, and before its lock is released.
  if (impl_->partial_fd >= 0) {
    ::unlink(partial_path().c_str());
    ::close(impl_->partial_fd);
    impl_->partial_fd = -1;
  }
}

std::string TraceWriter::begin_sequence(const SequenceSpec& spec) {
  if (impl_->seq_group.valid()) throw InternalError("begin_sequence: previous sequence not ended");
  const int64_t T = spec.n_tokens;
  if (T < 1 || T > kMaxTokens)
    throw UsageError(path_ + ": sequence n_tokens = " + std::to_string(T) + " is outside [1, " +
                     std::to_string(kMaxTokens) + "]");
  if (spec.prefill_len < 0 || spec.prefill_len > T)
    throw UsageError(path_ + ": prefill_len = " + std::to_string(spec.prefill_len) + " is outside [0, " +
                     std::to_string(T) + "]");
  if (spec.context_len != -1 && (spec.context_len < 1 || spec.context_len > spec.prefill_len))
    throw UsageError(path_ + ": context_len = " + std::to_string(spec.context_len) +
                     " is outside [1, prefill_len = " + std::to_string(spec.prefill_len) + "]");
  const bool kvzip = std::find(spec.kinds.begin(), spec.kinds.end(), Kind::kvzip_score) != spec.kinds.end();
  if (kvzip != (spec.kvzip_context != -1) || (kvzip && (spec.kvzip_context < 1 || spec.kvzip_context >= T)))
    throw UsageError(
        path_ + ": kvzip_context = " + std::to_string(spec.kvzip_context) +
        (kvzip ? " is outside [1, n_tokens = " + std::to_string(T) + ")" : " without a kvzip_score dataset"));
  if ((spec.needle_start != -1 || spec.needle_end != -1) &&
      !(spec.needle_start >= 0 && spec.needle_start < spec.needle_end && spec.needle_end <= spec.prefill_len))
    throw UsageError(path_ + ": needle [" + std::to_string(spec.needle_start) + ", " + std::to_string(spec.needle_end) +
                     ") is not a span inside the prompt [0, prefill_len = " + std::to_string(spec.prefill_len) + ")");
  if (static_cast<int64_t>(spec.tokens.size()) != T)
    throw UsageError(path_ + ": " + std::to_string(spec.tokens.size()) +
                     " token ids for n_tokens = " + std::to_string(T));
  impl_->seq_name = spec.name.empty() ? sequence_name(impl_->n_sequences) : spec.name;
  impl_->seq_tokens = T;
  const std::string gpath = "/sequences/" + impl_->seq_name;
  if (h5::has_link(impl_->file, gpath)) throw UsageError(path_ + ": duplicate sequence name " + impl_->seq_name);
  impl_->seq_group = h5::Handle(H5Gcreate2(impl_->file, gpath.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  if (!impl_->seq_group.valid()) throw IoError(path_ + ": cannot create " + gpath);
  hid_t g = impl_->seq_group;
  h5::write_int_attr(g, "n_tokens", T);
  h5::write_int_attr(g, "prefill_len", spec.prefill_len);
  if (spec.context_len != -1) h5::write_int_attr(g, "context_len", spec.context_len);
  if (spec.kvzip_context != -1) h5::write_int_attr(g, "kvzip_context", spec.kvzip_context);
  if (spec.needle_start != -1) {
    h5::write_int_attr(g, "needle_start", spec.needle_start);
    h5::write_int_attr(g, "needle_end", spec.needle_end);
  }
  h5::write_str_attr(g, "source", spec.source);

  {
    hsize_t dims[1] = {static_cast<hsize_t>(T)};
    h5::Handle space(H5Screate_simple(1, dims, nullptr));
    h5::Handle d(H5Dcreate2(g, "tokens", H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    if (!d.valid() || H5Dwrite(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, spec.tokens.data()) < 0)
      throw IoError(path_ + ": cannot write " + gpath + "/tokens");
  }
  if (!spec.text.empty()) {
    h5::Handle t(H5Tcopy(H5T_C_S1));
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    h5::Handle space(H5Screate(H5S_SCALAR));
    h5::Handle d(H5Dcreate2(g, "text", t, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    const char* p = spec.text.c_str();
    if (!d.valid() || H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, &p) < 0)
      throw IoError(path_ + ": cannot write " + gpath + "/text");
  }

  const int64_t D = header_.head_dim;
  const hsize_t chunk_t = static_cast<hsize_t>(std::min<int64_t>(T, kChunkTokens));
  h5::Handle layers(H5Gcreate2(g, "layers", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  for (int64_t l = 0; l < header_.n_layers; ++l) {
    const std::string lname = std::to_string(l);
    h5::Handle lg(H5Gcreate2(layers, lname.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    for (Kind kind : spec.kinds) {
      const int64_t heads = header_.heads_of(kind), W = kind_width(kind, D);
      const int rank = kind_rank(kind);  // 2 for vo_norm [H, T]: the trailing D is dropped
      hsize_t dims[3] = {static_cast<hsize_t>(heads), static_cast<hsize_t>(T), static_cast<hsize_t>(D)};
      hsize_t chunk[3] = {1, chunk_t, static_cast<hsize_t>(D)};
      h5::Handle space(H5Screate_simple(rank, dims, nullptr));
      h5::Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
      H5Pset_chunk(dcpl, rank, chunk);
      if (options_.compress) {
        H5Pset_shuffle(dcpl);
        H5Pset_deflate(dcpl, static_cast<unsigned>(options_.gzip_level));
      }
      // Cache one row of chunks (every head at one token block) so token-by-token writers do
      // not thrash: chunks are flushed whole.
      h5::Handle dapl(H5Pcreate(H5P_DATASET_ACCESS));
      size_t chunk_bytes = chunk_t * static_cast<size_t>(W) * static_cast<size_t>(dtype_bytes(header_.stored_dtype));
      H5Pset_chunk_cache(dapl, 12421, std::max<size_t>(chunk_bytes * static_cast<size_t>(heads) * 2, 1 << 20), 1.0);
      h5::Handle d(H5Dcreate2(lg, kind_name(kind), impl_->file_type, space, H5P_DEFAULT, dcpl, dapl));
      if (!d.valid()) throw IoError(path_ + ": cannot create " + gpath + "/layers/" + lname + "/" + kind_name(kind));
      Impl::Open o;
      o.dset = std::move(d);
      o.total = heads * T * W;
      impl_->open[{static_cast<int>(kind), l}] = std::move(o);
    }
  }
  return impl_->seq_name;
}

void TraceWriter::write(Kind kind, int64_t layer, int64_t head0, int64_t n_heads, int64_t t0, int64_t n_tok,
                        const float* data) {
  auto it = impl_->open.find({static_cast<int>(kind), layer});
  if (it == impl_->open.end())
    throw InternalError(std::string("write: no dataset ") + kind_name(kind) + " for layer " + std::to_string(layer) +
                        " in the current sequence");
  const int64_t heads = header_.heads_of(kind), D = header_.head_dim, T = impl_->seq_tokens;
  const int64_t W = kind_width(kind, D);
  const int rank = kind_rank(kind);
  if (head0 < 0 || n_heads < 1 || head0 + n_heads > heads || t0 < 0 || n_tok < 1 || t0 + n_tok > T)
    throw InternalError("write: block heads [" + std::to_string(head0) + ", " + std::to_string(head0 + n_heads) +
                        ") tokens [" + std::to_string(t0) + ", " + std::to_string(t0 + n_tok) +
                        ") outside the dataset " +
                        shape_str(rank == 2 ? std::vector<int64_t>{heads, T} : std::vector<int64_t>{heads, T, D}));
  hsize_t start[3] = {static_cast<hsize_t>(head0), static_cast<hsize_t>(t0), 0};
  hsize_t count[3] = {static_cast<hsize_t>(n_heads), static_cast<hsize_t>(n_tok), static_cast<hsize_t>(D)};
  h5::Handle fspace(H5Dget_space(it->second.dset));
  H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, nullptr, count, nullptr);
  h5::Handle mspace(H5Screate_simple(rank, count, nullptr));
  const size_t n = static_cast<size_t>(n_heads * n_tok * W);
  herr_t rc;
  if (header_.stored_dtype == DType::f32) {
    rc = H5Dwrite(it->second.dset, H5T_NATIVE_FLOAT, mspace, fspace, H5P_DEFAULT, data);
  } else {
    // Round here (nearest, ties to even) and hand HDF5 bytes already in the file type: no
    // library conversion, and the rounding is ours to test.
    auto& buf = impl_->half_buf;
    buf.resize(n);
    if (header_.stored_dtype == DType::f16)
      for (size_t i = 0; i < n; ++i) buf[i] = f32_to_f16(data[i]);
    else
      for (size_t i = 0; i < n; ++i) buf[i] = f32_to_bf16(data[i]);
    rc = H5Dwrite(it->second.dset, impl_->file_type, mspace, fspace, H5P_DEFAULT, buf.data());
  }
  if (rc < 0)
    throw IoError(partial_path() + ": write failed for /sequences/" + impl_->seq_name + "/layers/" +
                  std::to_string(layer) + "/" + kind_name(kind) + " (disk full?)");
  it->second.written += static_cast<int64_t>(n);
}

void TraceWriter::write_head(Kind kind, int64_t layer, int64_t head, const float* data) {
  write(kind, layer, head, 1, 0, impl_->seq_tokens, data);
}

void TraceWriter::end_sequence() {
  for (auto& [key, o] : impl_->open) {
    if (o.written != o.total)
      throw InternalError("sequence " + impl_->seq_name + ": layers/" + std::to_string(key.second) + "/" +
                          kind_name(static_cast<Kind>(key.first)) + " received " + std::to_string(o.written) + " of " +
                          std::to_string(o.total) + " elements");
  }
  impl_->open.clear();
  impl_->seq_group.reset();
  ++impl_->n_sequences;
}

void TraceWriter::finish() {
  if (impl_->seq_group.valid()) end_sequence();
  if (impl_->n_sequences == 0) throw InternalError(path_ + ": finish() with no sequence written");
  // Every byte of data reaches the disk before `complete = 1` does: a writer killed during the final
  // flush must not leave a file whose metadata says complete while chunks are missing.
  if (H5Fflush(impl_->file, H5F_SCOPE_GLOBAL) < 0) throw IoError(partial_path() + ": flush failed");
  sync_file(impl_->file);
  h5::write_int_attr(impl_->file, "complete", 1);
  if (H5Fflush(impl_->file, H5F_SCOPE_GLOBAL) < 0) throw IoError(partial_path() + ": flush failed");
  impl_->file.reset();
  fsync_path(partial_path(), false);
  std::error_code ec;
  fs::rename(partial_path(), path_, ec);
  if (ec) throw IoError(partial_path() + ": rename to " + path_ + " failed: " + ec.message());
  fs::path parent = fs::path(path_).parent_path();
  fsync_path(parent.empty() ? "." : parent.string(), true);
  impl_->finished = true;
  ::close(impl_->partial_fd);  // the lock goes only after the rename
  impl_->partial_fd = -1;
}

}  // namespace kvsim::traces
