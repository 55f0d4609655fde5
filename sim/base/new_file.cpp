#include "sim/base/new_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "sim/base/error.h"

namespace kvsim {

std::FILE* create_new_file(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return nullptr;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return nullptr;
  std::FILE* f = ::fdopen(fd, "wb");
  if (!f) ::close(fd);
  return f;
}

NewFile::NewFile(std::string path) : path_(std::move(path)), partial_(path_ + ".partial") {
  f_ = create_new_file(partial_);
  if (!f_) throw IoError(partial_ + ": cannot create (" + std::strerror(errno) + ")");
}

NewFile::~NewFile() {
  if (!f_) return;
  std::fclose(f_);
  std::remove(partial_.c_str());
}

void NewFile::write(const void* p, size_t n) {
  if (std::fwrite(p, 1, n, f_) != n) throw IoError(partial_ + ": write failed (disk full?)");
}

void NewFile::commit() {
  const bool ok = std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0;
  std::fclose(f_);
  f_ = nullptr;
  if (!ok || std::rename(partial_.c_str(), path_.c_str()) != 0) {
    const int e = errno;
    std::remove(partial_.c_str());
    throw IoError(partial_ + ": cannot write and rename it to " + path_ + " (" + std::strerror(e) + ")");
  }
}

}  // namespace kvsim
