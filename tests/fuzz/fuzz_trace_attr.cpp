// The trace reader on valid files with mutated attributes: whole-file mutations rarely get past
// HDF5's own checks to the reader's, so here the input is a program of attribute edits applied
// through the HDF5 library to a copy of a valid trace (fixtures/tiny.h5), which is then read like
// fuzz_trace. Each edit is
//   op      1 byte: target = op % 4 (root, the sequence group, layer 0's k dataset, tokens),
//                   action = (op / 4) % 8 (below)
//   name    1 byte: an index into kNames, or when past it a length n < 16 followed by n name bytes
//   value   action-dependent bytes (missing bytes read as 0)
// actions: 0 delete, 1 int64, 2 float64, 3 fixed-length string, 4 variable-length string,
//          5 int32 array (count byte then values), 6 uint8, 7 null-dataspace int64.
#include <hdf5.h>

#include <cstring>
#include <vector>

#include "tests/fuzz/fuzz_util.h"

namespace {

const char* const kNames[] = {"format",       "format_version", "complete", "model",      "architecture", "n_layers",
                              "n_heads",      "n_kv_heads",     "head_dim", "vocab_size", "rope_theta",   "rope_style",
                              "stored_dtype", "recorder",       "device",   "synthetic",  "created",      "n_tokens",
                              "prefill_len",  "context_len",    "source"};
constexpr size_t kNumNames = sizeof kNames / sizeof kNames[0];
const char* const kTargets[] = {"/", "/sequences/0000", "/sequences/0000/layers/0/k", "/sequences/0000/tokens"};

struct Bytes {
  const uint8_t* p;
  size_t n;
  uint8_t u8() { return n ? (--n, *p++) : 0; }
  std::string str(size_t len) {
    std::string s;
    while (len-- && n) s.push_back(static_cast<char>(u8()));
    return s;
  }
  template <class T>
  T pod() {
    unsigned char b[sizeof(T)] = {};
    for (auto& c : b) c = u8();
    T v;
    std::memcpy(&v, b, sizeof v);
    return v;
  }
};

void write_attr(hid_t obj, const char* name, hid_t type, hid_t space, const void* value) {
  if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
  hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  if (a < 0) return;
  if (value) H5Awrite(a, type, value);
  H5Aclose(a);
}

void apply(hid_t file, Bytes& in) {
  const uint8_t op = in.u8();
  const uint8_t sel = in.u8();
  std::string name = sel < kNumNames ? kNames[sel] : in.str(sel % 16);
  if (name.empty()) name = "x";
  hid_t obj = H5Oopen(file, kTargets[op % 4], H5P_DEFAULT);
  if (obj < 0) return;
  hid_t scalar = H5Screate(H5S_SCALAR);
  switch ((op / 4) % 8) {
    case 0:
      if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
      break;
    case 1: {
      const int64_t v = in.pod<int64_t>();
      write_attr(obj, name.c_str(), H5T_NATIVE_INT64, scalar, &v);
      break;
    }
    case 2: {
      const double v = in.pod<double>();
      write_attr(obj, name.c_str(), H5T_NATIVE_DOUBLE, scalar, &v);
      break;
    }
    case 3: {
      std::string v = in.str(in.u8());
      hid_t t = H5Tcopy(H5T_C_S1);
      H5Tset_size(t, v.empty() ? 1 : v.size());
      v.resize(v.empty() ? 1 : v.size(), '\0');
      write_attr(obj, name.c_str(), t, scalar, v.data());
      H5Tclose(t);
      break;
    }
    case 4: {
      const std::string v = in.str(in.u8());
      hid_t t = H5Tcopy(H5T_C_S1);
      H5Tset_size(t, H5T_VARIABLE);
      const char* p = v.c_str();
      write_attr(obj, name.c_str(), t, scalar, &p);
      H5Tclose(t);
      break;
    }
    case 5: {
      const hsize_t count = in.u8() % 8 + 1;
      std::vector<int32_t> v(count);
      for (auto& x : v) x = in.pod<int32_t>();
      hid_t space = H5Screate_simple(1, &count, nullptr);
      write_attr(obj, name.c_str(), H5T_NATIVE_INT32, space, v.data());
      H5Sclose(space);
      break;
    }
    case 6: {
      const uint8_t v = in.u8();
      write_attr(obj, name.c_str(), H5T_NATIVE_UINT8, scalar, &v);
      break;
    }
    default: {
      hid_t null_space = H5Screate(H5S_NULL);
      write_attr(obj, name.c_str(), H5T_NATIVE_INT64, null_space, nullptr);
      H5Sclose(null_space);
    }
  }
  H5Sclose(scalar);
  H5Oclose(obj);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string base = kvsim::fuzz::read_file(kvsim::fuzz::fixture("tiny.h5"));
  static const std::string path = kvsim::fuzz::scratch("edited.h5");
  kvsim::fuzz::write_file(path, reinterpret_cast<const uint8_t*>(base.data()), base.size());
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (file < 0) std::abort();  // the fixture itself must open
  Bytes in{data, size};
  for (int edits = 0; in.n > 0 && edits < 16; ++edits) apply(file, in);
  H5Fclose(file);
  kvsim::fuzz::expect_clean([&] { kvsim::fuzz::exercise_trace(path); });
  return 0;
}
