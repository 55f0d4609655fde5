#include "tools/commands.h"

namespace kvsim::tools {

int& exit_status() {
  static int status = 0;
  return status;
}

}  // namespace kvsim::tools
