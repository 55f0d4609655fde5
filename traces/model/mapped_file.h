// A read-only memory map of a whole file (weights are read once, converted to float32).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kvsim::model {

class MappedFile {
 public:
  // Throws UsageError if the file does not exist, IoError if it cannot be mapped.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& o) noexcept;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace kvsim::model
