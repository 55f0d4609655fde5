// Every path kvsim opens for reading (trace, sidecar, model, safetensors, tokenizer, sweep config,
// prompt and text files, results store) must name a regular file, or a link to one: opening a FIFO
// blocks until a writer appears, a device reads without end, a directory reads as nothing. Readers
// check before they open (or fstat a descriptor opened with O_NONBLOCK) and refuse in one line.
#pragma once

#include <sys/stat.h>

#include <string>

#include "sim/base/error.h"

namespace kvsim {

// "a FIFO (named pipe)", "a directory", ... for a st_mode that is not a regular file's.
inline std::string file_kind(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return S_ISREG(mode) ? "a regular file" : "not a regular file";
}

// UsageError "WHAT PATH: is a FIFO (named pipe), not a regular file" unless `path` (links followed)
// is a regular file. A path that does not exist passes: the caller's open names that error itself.
inline void require_regular_file(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || S_ISREG(st.st_mode)) return;
  throw UsageError(what + " " + path + ": is " + file_kind(st.st_mode) + ", not a regular file");
}

}  // namespace kvsim
