// Thin RAII and attribute helpers over the HDF5 C API, private to traces/.
// Every failure becomes a kvsim error naming the file and the object.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace kvsim::traces::h5 {

// Turns off HDF5's automatic error printing once per process (we report errors ourselves).
void quiet();

// Owns one hid_t and closes it with the right H5*close.
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
    }
    return *this;
  }
  ~Handle() { reset(); }
  void reset();
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  operator hid_t() const { return id_; }

 private:
  hid_t id_ = H5I_INVALID_HID;
};

// Before the library reads the scalar variable-length string `obj` (an attribute or a dataset):
// reads its descriptor (length, global heap collection, index) and walks that collection as the
// library will, throwing FormatError naming `where` when the collection is inconsistent or the
// object is missing or not exactly the string's length. HDF5 1.10 trusts the sizes there: one
// flipped bit makes it overrun its buffers or loop forever (traces/FORMAT.md, "Damaged files").
// Reads only that collection (4 KiB in kvsim's and h5py's files).
void check_vlen_string(hid_t obj, const std::string& where);

// A string type (`ftype` of an attribute or dataset) that the library can convert without trusting a
// damaged size: a variable-length string's element type must be one byte (HDF5 1.10 allocates
// length × element size before it reads; one flipped bit there asks for gigabytes), a fixed-length
// string's size must be at most the `stored` bytes the object really holds. Throws FormatError naming
// `where`.
void check_string_type(hid_t ftype, uint64_t stored, const std::string& where);

bool has_attr(hid_t obj, const char* name);
bool has_link(hid_t loc, const std::string& path);

// A trace holds its data itself (traces/FORMAT.md "Storage"): throws FormatError naming `where` unless
// every component of `path` below `loc` is a hard link (no external, soft or user-defined link).
void require_hard_links(hid_t loc, const std::string& path, const std::string& where);
// Throws FormatError naming `where` unless every byte the dataset declares is stored in this file:
// no virtual layout, no external storage, a contiguous or compact layout whose storage holds all of
// it, or a chunked one with every chunk written and each chunk at most `max_chunk_bytes` inflated.
void require_stored_inside(hid_t dset, const std::string& where, uint64_t max_chunk_bytes);

// Readers: `where` is "file.h5: /path" for messages. Missing attribute or wrong class throws FormatError.
std::string read_str_attr(hid_t obj, const char* name, const std::string& where);
int64_t read_int_attr(hid_t obj, const char* name, const std::string& where);
double read_float_attr(hid_t obj, const char* name, const std::string& where);

void write_str_attr(hid_t obj, const char* name, const std::string& value);
void write_int_attr(hid_t obj, const char* name, int64_t value);
void write_float_attr(hid_t obj, const char* name, double value);

// HDF5 custom 16-bit float types (IEEE half and bfloat16 layouts); caller closes.
hid_t make_f16_type();
hid_t make_bf16_type();

// How a float dataset's on-disk type maps to what we can read without HDF5's slow soft conversion.
enum class FloatLayout { f32, f16, bf16, other };
FloatLayout float_layout(hid_t type);

std::vector<hsize_t> dataset_dims(hid_t dset);
std::string class_name(H5T_class_t c);

}  // namespace kvsim::traces::h5
