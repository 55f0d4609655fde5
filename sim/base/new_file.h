// Creating a private temporary file for a write-then-rename: whatever sits at the name (a leftover
// of a killed run, or a symbolic link planted there) is unlinked, never followed, and the file is
// created afresh with O_EXCL | O_NOFOLLOW, so no byte outside the new file can change.
#pragma once

#include <cstdio>
#include <string>

namespace kvsim {

// The new file opened for writing ("wb"), or nullptr with errno set.
std::FILE* create_new_file(const std::string& path);

// A file written whole or not at all: bytes go to PATH.partial (created afresh, never through a
// link), and commit() syncs it and renames it to PATH. Without commit() the partial is removed.
class NewFile {
 public:
  explicit NewFile(std::string path);
  ~NewFile();
  NewFile(const NewFile&) = delete;
  NewFile& operator=(const NewFile&) = delete;
  void write(const void* p, size_t n);
  void commit();

 private:
  std::string path_, partial_;
  std::FILE* f_ = nullptr;
};

}  // namespace kvsim
