// safetensors files (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
// length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
// then the data. Opening memory-maps the file and checks every entry against the file before any
// tensor is read: a header that lies about offsets, sizes or dtypes is a FormatError naming it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "traces/model/mapped_file.h"

namespace kvsim::model {

enum class StDType { f32, f16, bf16 };
const char* st_dtype_name(StDType d);  // "F32", "F16", "BF16"

struct StTensor {
  std::string name;
  StDType dtype = StDType::f32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mapped file
  uint64_t bytes = 0;
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  const std::string& path() const { return file_.path(); }
  const std::map<std::string, StTensor>& tensors() const { return tensors_; }

 private:
  MappedFile file_;
  std::map<std::string, StTensor> tensors_;
};

// The tensor as float32; its shape must equal `shape` (FormatError naming file and tensor otherwise).
std::vector<float> to_f32(const StTensor& t, const std::vector<int64_t>& shape, const std::string& file);

struct StOut {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;  // float32, converted to `dtype` on write
};
// Writes a safetensors file (tensors in the given order, header padded to 8 bytes) via NewFile
// (sim/base/new_file.h): whole or not at all.
void write_safetensors(const std::string& path, const std::vector<StOut>& tensors, StDType dtype,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace kvsim::model
