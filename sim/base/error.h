// Typed errors for user and environment failures. main() catches kvsim::Error, prints its message
// on one line and returns exit_code(): 2 for bad input or usage, 1 for runtime failures.
// Messages quote user-supplied text (sequence names, specs, paths, YAML scalars); the constructor
// escapes its control characters (one_line) so that every message stays one line.
#pragma once

#include <cstdio>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvsim {

// Length of the well-formed UTF-8 sequence starting at s[i] (RFC 3629: no overlong forms, no
// surrogates, at most U+10FFFF), 0 when the bytes there are not one.
inline size_t utf8_sequence(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  size_t n = 0;
  unsigned char lo = 0x80, hi = 0xbf;  // the second byte's range
  if (c >= 0xc2 && c <= 0xdf)
    n = 2;
  else if (c >= 0xe0 && c <= 0xef)
    n = 3, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
  else if (c >= 0xf0 && c <= 0xf4)
    n = 4, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
  else
    return 0;
  if (s.size() - i < n || b(1) < lo || b(1) > hi) return 0;
  for (size_t k = 2; k < n; ++k)
    if (b(k) < 0x80 || b(k) > 0xbf) return 0;
  return n;
}

// `text` with every control character (bytes < 0x20 and 0x7f) written as an escape: \n, \r, \t,
// \xNN for the others; well-formed UTF-8 is kept, every byte that is not part of it (a damaged
// file's bytes quoted in a message) is written as \xNN.
inline std::string one_line(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (const size_t n = c >= 0x80 ? utf8_sequence(text, i) : 0; n > 0) {
      out.append(text, i, n);
      i += n - 1;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(one_line(what)) {}
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
