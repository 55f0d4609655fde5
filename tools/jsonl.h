// JSON Lines input (`kvsim record --prompts`, `kvsim prefix --workload`): one JSON object per line,
// blank lines skipped; a line that is not a JSON object is a FormatError naming FILE:LINE.
#pragma once

#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "sim/base/error.h"
#include "sim/base/regular_file.h"

namespace kvsim::tools {

// Calls fn(object, "FILE:LINE") for each non-blank line of `path`, in order; `option` names the
// command-line flag in the error for a file that cannot be opened.
inline void for_each_jsonl_object(const std::string& option, const std::string& path,
                                  const std::function<void(const nlohmann::json&, const std::string&)>& fn) {
  require_regular_file(path, option);
  std::ifstream in(path);
  if (!in) throw UsageError(option + " " + path + ": cannot open");
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(n);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(where + ": not JSON (" + e.what() + ")");
    }
    if (!j.is_object()) throw FormatError(where + ": expected a JSON object");
    fn(j, where);
  }
}

}  // namespace kvsim::tools
