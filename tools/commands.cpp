#include "tools/commands.h"

#include <nlohmann/json.hpp>

namespace kvsim::tools {

int& exit_status() {
  static int status = 0;
  return status;
}

std::string not_negative(const std::string& value) {
  return !value.empty() && value[0] == '-' ? "must be >= 0, got " + value : "";
}

std::string json_text(const nlohmann::json& j) {
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace kvsim::tools
