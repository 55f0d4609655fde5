#include "tools/commands.h"

#include <nlohmann/json.hpp>

namespace kvsim::tools {

int& exit_status() {
  static int status = 0;
  return status;
}

std::string json_text(const nlohmann::json& j) {
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace kvsim::tools
