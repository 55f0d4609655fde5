#include "traces/h5.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <mutex>
#include <set>

#include "sim/base/error.h"

namespace kvsim::traces::h5 {

void quiet() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

void Handle::reset() {
  if (id_ < 0) return;
  switch (H5Iget_type(id_)) {
    case H5I_FILE: H5Fclose(id_); break;
    case H5I_GROUP: H5Gclose(id_); break;
    case H5I_DATASET: H5Dclose(id_); break;
    case H5I_DATASPACE: H5Sclose(id_); break;
    case H5I_DATATYPE: H5Tclose(id_); break;
    case H5I_ATTR: H5Aclose(id_); break;
    case H5I_GENPROP_LST: H5Pclose(id_); break;
    default: break;
  }
  id_ = H5I_INVALID_HID;
}

namespace {

// A global heap collection (HDF5 file format spec, "Global Heap"): "GCOL", version 1, three
// reserved bytes, the collection's size (8 bytes, header included), then objects, each a 16-byte
// header (index 2, reference count 2, reserved 4, size 8) and its data padded to 8 bytes; index 0
// is the free space, whose size counts its own header. Matching all 8 prefix bytes makes a false
// match inside raw data a 2^-64 event per offset.
constexpr char kHeapPrefix[8] = {'G', 'C', 'O', 'L', 1, 0, 0, 0};
constexpr uint64_t kHeapMinSize = 4096;  // the library never makes a smaller collection
constexpr uint64_t kObjHeader = 16;

uint64_t le64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

class FileBytes {
 public:
  explicit FileBytes(const std::string& path) : path_(path), fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ < 0) throw IoError(path + ": cannot open: " + std::strerror(errno));
    size_ = static_cast<uint64_t>(::lseek(fd_, 0, SEEK_END));
  }
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;
  ~FileBytes() { ::close(fd_); }
  uint64_t size() const { return size_; }
  // n bytes at off (off + n <= size()), or IoError.
  void read(uint64_t off, void* out, size_t n) const {
    auto* p = static_cast<unsigned char*>(out);
    while (n > 0) {
      const ssize_t got = ::pread(fd_, p, n, static_cast<off_t>(off));
      if (got <= 0) throw IoError(path_ + ": read failed at offset " + std::to_string(off));
      p += got, off += static_cast<uint64_t>(got), n -= static_cast<size_t>(got);
    }
  }

 private:
  std::string path_;
  int fd_;
  uint64_t size_ = 0;
};

constexpr uint64_t kNoObject = ~uint64_t{0};

// Walks the collection at `at` as the library will and returns the size of its object `want`
// (kNoObject when it has none); throws FormatError on an inconsistent collection.
uint64_t check_heap_at(const FileBytes& f, uint64_t at, const std::string& path, uint32_t want) {
  const std::string where = path + ": global heap collection at offset " + std::to_string(at);
  unsigned char h[16];
  if (f.size() - at < sizeof h) throw FormatError(where + ": truncated header");
  f.read(at, h, sizeof h);
  const uint64_t size = le64(h + 8);
  if (size < kHeapMinSize || size > f.size() - at)
    throw FormatError(where + ": size " + std::to_string(size) + " outside [" + std::to_string(kHeapMinSize) + ", " +
                      std::to_string(f.size() - at) + "] (the bytes left in the file)");
  if (std::memcmp(h, kHeapPrefix, sizeof kHeapPrefix) != 0)
    throw FormatError(where + ": no global heap collection there (signature GCOL, version 1 expected)");
  const uint64_t end = at + size;
  std::set<uint16_t> seen;
  uint64_t found = kNoObject;
  for (uint64_t p = at + 16; p < end;) {
    if (end - p < kObjHeader) break;  // a tail too short for an object header is free space
    unsigned char o[kObjHeader];
    f.read(p, o, sizeof o);
    const uint16_t idx = static_cast<uint16_t>(o[0] | o[1] << 8);
    const uint64_t osize = le64(o + 8);
    const std::string obj = where + ": object " + std::to_string(idx) + " at offset " + std::to_string(p);
    uint64_t need = 0;
    if (idx == 0) {  // free space: its size includes its header
      if (osize < kObjHeader || osize > end - p)
        throw FormatError(obj + ": free-space size " + std::to_string(osize) + " outside [16, " +
                          std::to_string(end - p) + "]");
      need = osize;
    } else {
      if (osize > end - p - kObjHeader)
        throw FormatError(obj + ": size " + std::to_string(osize) + " runs past the collection's end (" +
                          std::to_string(end - p - kObjHeader) + " bytes left)");
      if (!seen.insert(idx).second) throw FormatError(obj + ": index given twice");
      if (idx == want) found = osize;
      need = kObjHeader + ((osize + 7) & ~uint64_t{7});
      if (need > end - p) need = end - p;  // padding past the end: the walk stops there
    }
    p += need;
  }
  return found;
}

// The raw descriptor of a variable-length string as stored in the file (HDF5 file format spec,
// "Disk format of variable-length data"): its length (4 bytes), the address of its global heap
// collection and its index there (4 bytes). The library has no call that hands it out, so a soft
// conversion from a variable-length string to an opaque type of the descriptor's size, registered
// here, leaves the bytes the library read from the file in the caller's buffer.
// Only for kvsim's own tagged opaque type: other libraries in the process (h5py converts
// variable-length strings to its Python-object opaque type the same way) keep their conversions.
constexpr const char* kDescriptorTag = "kvsim: variable-length descriptor";

bool is_descriptor_type(hid_t t) {
  if (H5Tget_class(t) != H5T_OPAQUE) return false;
  char* tag = H5Tget_tag(t);
  const bool ours = tag && std::strcmp(tag, kDescriptorTag) == 0;
  H5free_memory(tag);
  return ours;
}

herr_t keep_descriptor(hid_t src, hid_t dst, H5T_cdata_t* cdata, size_t, size_t, size_t, void*, void*, hid_t) {
  switch (cdata->command) {
    case H5T_CONV_INIT:
      if (H5Tget_class(src) != H5T_STRING || H5Tis_variable_str(src) <= 0 || !is_descriptor_type(dst)) return -1;
      cdata->need_bkg = H5T_BKG_NO;
      return 0;
    case H5T_CONV_CONV: return 0;  // the source bytes are the answer, already in place
    default: return 0;
  }
}

struct VlenRef {
  uint64_t length = 0, addr = 0;
  uint32_t index = 0;
};

// Reads the descriptor of the scalar variable-length string `obj` (an attribute or a dataset).
VlenRef read_descriptor(hid_t obj, bool attribute, size_t sizeof_addr, const std::string& where) {
  static std::once_flag once;
  std::call_once(once, [] {
    Handle vs(H5Tcopy(H5T_C_S1));
    H5Tset_size(vs, H5T_VARIABLE);
    Handle op(H5Tcreate(H5T_OPAQUE, 16));
    H5Tset_tag(op, kDescriptorTag);
    H5Tregister(H5T_PERS_SOFT, "kvsim_vlen_descriptor", vs, op, keep_descriptor);
  });
  const size_t n = 4 + sizeof_addr + 4;
  Handle op(H5Tcreate(H5T_OPAQUE, n));
  H5Tset_tag(op, kDescriptorTag);
  std::vector<unsigned char> raw(n);
  const herr_t rc =
      attribute ? H5Aread(obj, op, raw.data()) : H5Dread(obj, op, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data());
  if (rc < 0) throw FormatError(where + ": cannot read its variable-length descriptor");
  VlenRef r;
  r.length = static_cast<uint64_t>(raw[0]) | raw[1] << 8 | raw[2] << 16 | static_cast<uint64_t>(raw[3]) << 24;
  for (size_t i = sizeof_addr; i-- > 0;) r.addr = r.addr << 8 | raw[4 + i];
  r.index = static_cast<uint32_t>(raw[4 + sizeof_addr] | raw[5 + sizeof_addr] << 8 | raw[6 + sizeof_addr] << 16 |
                                  static_cast<uint32_t>(raw[7 + sizeof_addr]) << 24);
  return r;
}

}  // namespace

void check_vlen_string(hid_t obj, const std::string& where) {
  const bool attribute = H5Iget_type(obj) == H5I_ATTR;
  Handle file(H5Iget_file_id(obj));
  Handle fcpl(H5Fget_create_plist(file));
  size_t sizeof_addr = 0, sizeof_size = 0;
  hsize_t userblock = 0;
  if (!fcpl.valid() || H5Pget_sizes(fcpl, &sizeof_addr, &sizeof_size) < 0 || H5Pget_userblock(fcpl, &userblock) < 0 ||
      sizeof_addr < 2 || sizeof_addr > 8)
    throw FormatError(where + ": cannot read the file's address size");
  std::string path(static_cast<size_t>(std::max<ssize_t>(H5Fget_name(file, nullptr, 0), 0)), '\0');
  H5Fget_name(file, path.data(), path.size() + 1);
  const VlenRef ref = read_descriptor(obj, attribute, sizeof_addr, where);
  if (ref.length == 0) return;  // an empty string: the library reads no heap
  FileBytes f(path);
  const uint64_t at = ref.addr + userblock;
  if (ref.addr > f.size() || at > f.size())
    throw FormatError(where + ": its global heap collection at offset " + std::to_string(ref.addr) +
                      " is past the end of the file (" + std::to_string(f.size()) + " bytes)");
  const uint64_t size = check_heap_at(f, at, path, ref.index);
  if (size != ref.length)
    throw FormatError(where + ": a string of " + std::to_string(ref.length) + " bytes whose heap object " +
                      std::to_string(ref.index) + " at offset " + std::to_string(at) +
                      (size == kNoObject ? " does not exist" : " holds " + std::to_string(size)));
}

bool has_attr(hid_t obj, const char* name) { return H5Aexists(obj, name) > 0; }

bool has_link(hid_t loc, const std::string& path) {
  // Check each component so that a missing intermediate group is not an HDF5 error.
  std::string prefix;
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t next = path.find('/', pos);
    if (next == std::string::npos) next = path.size();
    prefix = path.substr(0, next);
    if (!prefix.empty() && prefix != "/" && H5Lexists(loc, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    pos = next + 1;
  }
  return true;
}

void require_hard_links(hid_t loc, const std::string& path, const std::string& where) {
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t next = path.find('/', pos);
    if (next == std::string::npos) next = path.size();
    const std::string prefix = path.substr(0, next);
    pos = next + 1;
    if (prefix.empty() || prefix == "/") continue;
    H5L_info_t info;
    if (H5Lget_info(loc, prefix.c_str(), &info, H5P_DEFAULT) < 0)
      throw FormatError(where + ": cannot read the link '" + prefix + "'");
    if (info.type == H5L_TYPE_HARD) continue;
    std::string kind = info.type == H5L_TYPE_SOFT       ? "a soft link"
                       : info.type == H5L_TYPE_EXTERNAL ? "an external link (to another file)"
                                                        : "a user-defined link";
    throw FormatError(where + ": '" + prefix + "' is " + kind +
                      "; a trace must hold its data itself, through hard links only");
  }
}

void require_stored_inside(hid_t dset, const std::string& where, uint64_t max_chunk_bytes) {
  Handle dcpl(H5Dget_create_plist(dset));
  if (!dcpl.valid()) throw FormatError(where + ": cannot read the dataset's storage properties");
  const H5D_layout_t layout = H5Pget_layout(dcpl);
  if (layout == H5D_VIRTUAL)
    throw FormatError(where +
                      ": a virtual dataset (its data lives in other datasets or files); a trace must hold "
                      "its data itself");
  if (const int n_ext = H5Pget_external_count(dcpl); n_ext != 0)
    throw FormatError(where + ": external storage in " + std::to_string(n_ext) +
                      " outside file(s); a trace must hold its data itself");
  Handle type(H5Dget_type(dset));
  const uint64_t elem = H5Tget_size(type);
  uint64_t declared = elem;
  const std::vector<hsize_t> dims = dataset_dims(dset);
  for (hsize_t d : dims) declared *= d;  // callers checked the shape against the limits first
  const uint64_t stored = H5Dget_storage_size(dset);
  if (layout == H5D_CONTIGUOUS || layout == H5D_COMPACT) {
    if (stored < declared)
      throw FormatError(where + ": only " + std::to_string(stored) + " of the " + std::to_string(declared) +
                        " bytes its shape " + shape_str(dims) + " declares are stored in the file");
    return;
  }
  if (layout != H5D_CHUNKED) throw FormatError(where + ": unknown storage layout " + std::to_string(layout));
  std::vector<hsize_t> chunk(dims.size());
  if (H5Pget_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data()) != static_cast<int>(chunk.size()))
    throw FormatError(where + ": cannot read the chunk shape");
  uint64_t chunk_bytes = elem, n_chunks = 1;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (chunk[i] == 0) throw FormatError(where + ": chunk shape " + shape_str(chunk) + " has a zero extent");
    chunk_bytes *= chunk[i];
    n_chunks *= (dims[i] + chunk[i] - 1) / chunk[i];
  }
  if (chunk_bytes > max_chunk_bytes)
    throw FormatError(where + ": chunks of " + shape_str(chunk) + " hold " + std::to_string(chunk_bytes) +
                      " bytes each, over the limit " + std::to_string(max_chunk_bytes) +
                      " (every read would inflate a whole chunk)");
  hsize_t have = 0;
  Handle space(H5Dget_space(dset));
  if (H5Dget_num_chunks(dset, space, &have) < 0) throw FormatError(where + ": cannot count the stored chunks");
  if (have < n_chunks)
    throw FormatError(where + ": only " + std::to_string(have) + " of the " + std::to_string(n_chunks) +
                      " chunks its shape " + shape_str(dims) + " declares are stored in the file");
}

namespace {

Handle open_attr(hid_t obj, const char* name, const std::string& where) {
  if (!has_attr(obj, name)) throw FormatError(where + ": missing attribute '" + name + "'");
  Handle a(H5Aopen(obj, name, H5P_DEFAULT));
  if (!a.valid()) throw FormatError(where + ": cannot open attribute '" + name + "'");
  Handle space(H5Aget_space(a));
  if (H5Sget_simple_extent_npoints(space) != 1)
    throw FormatError(where + ": attribute '" + std::string(name) + "' has " +
                      std::to_string(H5Sget_simple_extent_npoints(space)) + " elements, expected a scalar");
  return a;
}

H5T_class_t attr_class(hid_t a) {
  Handle t(H5Aget_type(a));
  return H5Tget_class(t);
}

}  // namespace

std::string class_name(H5T_class_t c) {
  switch (c) {
    case H5T_INTEGER: return "integer";
    case H5T_FLOAT: return "float";
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ENUM: return "enum";
    case H5T_ARRAY: return "array";
    case H5T_OPAQUE: return "opaque";
    case H5T_BITFIELD: return "bitfield";
    case H5T_REFERENCE: return "reference";
    case H5T_VLEN: return "vlen";
    default: return "unknown";
  }
}

void check_string_type(hid_t ftype, uint64_t stored, const std::string& where) {
  if (H5Tis_variable_str(ftype) > 0) {
    Handle elem(H5Tget_super(ftype));
    const size_t n = elem.valid() ? H5Tget_size(elem) : 0;
    if (n != 1)
      throw FormatError(where + ": a variable-length string of " + std::to_string(n) +
                        "-byte characters (damaged type; a string's characters are 1 byte)");
    return;
  }
  if (const size_t n = H5Tget_size(ftype); n > stored)
    throw FormatError(where + ": a fixed-length string of " + std::to_string(n) + " bytes, but only " +
                      std::to_string(stored) + " bytes are stored");
}

std::string read_str_attr(hid_t obj, const char* name, const std::string& where) {
  Handle a = open_attr(obj, name, where);
  Handle ftype(H5Aget_type(a));
  if (H5Tget_class(ftype) != H5T_STRING)
    throw FormatError(where + ": attribute '" + name + "' is " + class_name(H5Tget_class(ftype)) + ", expected string");
  check_string_type(ftype, H5Aget_storage_size(a), where + ": attribute '" + name + "'");
  if (H5Tis_variable_str(ftype) > 0) {
    check_vlen_string(a, where + ": attribute '" + name + "'");
    Handle mtype(H5Tcopy(H5T_C_S1));
    H5Tset_size(mtype, H5T_VARIABLE);
    H5Tset_cset(mtype, H5Tget_cset(ftype));
    char* p = nullptr;
    if (H5Aread(a, mtype, &p) < 0) throw FormatError(where + ": cannot read attribute '" + name + "'");
    std::string s = p ? p : "";
    Handle space(H5Aget_space(a));
    H5Dvlen_reclaim(mtype, space, H5P_DEFAULT, &p);
    return s;
  }
  size_t n = H5Tget_size(ftype);
  std::string s(n, '\0');
  Handle mtype(H5Tcopy(ftype));
  if (H5Aread(a, mtype, s.data()) < 0) throw FormatError(where + ": cannot read attribute '" + name + "'");
  s.resize(s.find('\0') == std::string::npos ? s.size() : s.find('\0'));
  return s;
}

int64_t read_int_attr(hid_t obj, const char* name, const std::string& where) {
  Handle a = open_attr(obj, name, where);
  H5T_class_t c = attr_class(a);
  if (c != H5T_INTEGER && c != H5T_ENUM)  // h5py writes Python bools as an enum of int8
    throw FormatError(where + ": attribute '" + name + "' is " + class_name(c) + ", expected integer");
  int64_t v = 0;
  if (c == H5T_ENUM) {
    Handle t(H5Aget_type(a));
    Handle base(H5Tget_super(t));
    if (H5Aread(a, base, &v) < 0 || H5Tget_size(base) > 8)
      throw FormatError(where + ": cannot read attribute '" + name + "'");
    if (H5Tget_size(base) == 1) v = static_cast<int8_t>(v & 0xff);
    return v;
  }
  if (H5Aread(a, H5T_NATIVE_INT64, &v) < 0) throw FormatError(where + ": cannot read attribute '" + name + "'");
  return v;
}

double read_float_attr(hid_t obj, const char* name, const std::string& where) {
  Handle a = open_attr(obj, name, where);
  H5T_class_t c = attr_class(a);
  if (c != H5T_FLOAT && c != H5T_INTEGER)
    throw FormatError(where + ": attribute '" + name + "' is " + class_name(c) + ", expected a number");
  double v = 0;
  if (H5Aread(a, H5T_NATIVE_DOUBLE, &v) < 0) throw FormatError(where + ": cannot read attribute '" + name + "'");
  return v;
}

namespace {
void replace_attr(hid_t obj, const char* name, hid_t type, const void* value) {
  if (has_attr(obj, name)) H5Adelete(obj, name);
  Handle space(H5Screate(H5S_SCALAR));
  Handle a(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT));
  if (!a.valid() || H5Awrite(a, type, value) < 0) throw IoError(std::string("cannot write attribute '") + name + "'");
}
}  // namespace

void write_str_attr(hid_t obj, const char* name, const std::string& value) {
  Handle t(H5Tcopy(H5T_C_S1));
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  const char* p = value.c_str();
  replace_attr(obj, name, t, &p);
}

void write_int_attr(hid_t obj, const char* name, int64_t value) { replace_attr(obj, name, H5T_STD_I64LE, &value); }

void write_float_attr(hid_t obj, const char* name, double value) { replace_attr(obj, name, H5T_IEEE_F64LE, &value); }

hid_t make_f16_type() {
  hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  H5Tset_fields(t, 15, 10, 5, 0, 10);
  H5Tset_precision(t, 16);
  H5Tset_size(t, 2);
  H5Tset_ebias(t, 15);
  return t;
}

hid_t make_bf16_type() {
  hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  H5Tset_fields(t, 15, 7, 8, 0, 7);
  H5Tset_precision(t, 16);
  H5Tset_size(t, 2);
  H5Tset_ebias(t, 127);
  return t;
}

FloatLayout float_layout(hid_t type) {
  if (H5Tget_class(type) != H5T_FLOAT || H5Tget_order(type) != H5T_ORDER_LE) return FloatLayout::other;
  size_t spos, epos, esize, mpos, msize;
  if (H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) < 0) return FloatLayout::other;
  size_t size = H5Tget_size(type);
  size_t ebias = H5Tget_ebias(type);
  if (size == 4 && spos == 31 && epos == 23 && esize == 8 && mpos == 0 && msize == 23 && ebias == 127)
    return FloatLayout::f32;
  if (size == 2 && spos == 15 && epos == 10 && esize == 5 && mpos == 0 && msize == 10 && ebias == 15)
    return FloatLayout::f16;
  if (size == 2 && spos == 15 && epos == 7 && esize == 8 && mpos == 0 && msize == 7 && ebias == 127)
    return FloatLayout::bf16;
  return FloatLayout::other;
}

std::vector<hsize_t> dataset_dims(hid_t dset) {
  Handle space(H5Dget_space(dset));
  int nd = H5Sget_simple_extent_ndims(space);
  if (nd < 0) return {};
  std::vector<hsize_t> dims(static_cast<size_t>(nd));
  if (nd > 0) H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  return dims;
}

}  // namespace kvsim::traces::h5
