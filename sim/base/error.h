// Typed errors for user and environment failures. main() catches kvsim::Error, prints its message
// on one line and returns exit_code(): 2 for bad input or usage, 1 for runtime failures.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvsim {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
  virtual int exit_code() const { return 1; }
};

// Bad command-line usage or an invalid parameter value.
class UsageError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return 2; }
};

// A file that is not what it claims to be (wrong format, version, attribute, dtype class).
class FormatError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return 2; }
};

// Shapes that disagree with each other or with the declared dimensions.
class ShapeMismatch : public FormatError {
 public:
  using FormatError::FormatError;
};

// Non-finite values found where finite ones are required.
class NumericError : public FormatError {
 public:
  using FormatError::FormatError;
};

// A backend or feature that this binary was built without, or that has no device.
class NotCompiled : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return 2; }
};

// A failing CUDA runtime call.
class CudaError : public Error {
 public:
  using Error::Error;
};

// Reading or writing a file failed for an environmental reason (disk full, permissions).
class IoError : public Error {
 public:
  using Error::Error;
};

// Internal invariant violated: a bug in kvsim, not in the input.
class InternalError : public Error {
 public:
  using Error::Error;
};

// "[a, b, c]" for messages.
template <typename Seq>
std::string shape_str(const Seq& dims) {
  std::ostringstream s;
  s << '[';
  bool first = true;
  for (auto d : dims) {
    if (!first) s << ", ";
    s << d;
    first = false;
  }
  s << ']';
  return s.str();
}

}  // namespace kvsim

#define KVSIM_STR2(x) #x
#define KVSIM_STR(x) KVSIM_STR2(x)
#define KVSIM_ASSERT(cond)                                                                             \
  do {                                                                                                 \
    if (!(cond))                                                                                       \
      throw ::kvsim::InternalError(std::string("internal error: assertion `" #cond "` at ") + __FILE__ \
                                   ":" KVSIM_STR(__LINE__));                                           \
  } while (0)
