#include "tools/commands.h"
namespace kvsim::tools {
void add_convert(CLI::App&) {}
}
