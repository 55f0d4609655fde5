// kvsim plot KIND (--db F | --trace F) --out DIR [options]: figures, drawn by the Python scripts in plots/.
// kvsim validate --model M [--text F ...] --out DIR [options]: the offline-vs-live validation report
// (plots/kvsim_validate.py, which runs this kvsim's record, run and ppl).
// These subcommands only find the scripts and exec Debian's Python on them with the arguments unchanged
// (validate also gets --kvsim, this binary), so the script's exit status (0, 1, 2) is kvsim's; `kvsim
// plot --help` is the script's help.
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "sim/base/error.h"
#include "tools/commands.h"

#ifndef KVSIM_PLOTS_DIR
#define KVSIM_PLOTS_DIR ""
#endif

namespace kvsim::tools {

namespace {

// KVSIM_PLOTS_DIR from the environment, else the source tree's plots/ baked in at build time.
std::string plots_dir() {
  const char* env = std::getenv("KVSIM_PLOTS_DIR");
  return env && *env ? env : KVSIM_PLOTS_DIR;
}

// KVSIM_PYTHON from the environment, else Debian's python3 (which has matplotlib, pandas, h5py, numpy).
std::string python_path() {
  const char* env = std::getenv("KVSIM_PYTHON");
  return env && *env ? env : "/usr/bin/python3";
}

[[noreturn]] void exec_script(const std::string& cmd, const std::string& name, const std::vector<std::string>& pre,
                              const std::vector<std::string>& args) {
  namespace fs = std::filesystem;
  const std::string dir = plots_dir();
  const fs::path script = fs::path(dir) / name;
  std::error_code ec;
  if (dir.empty() || !fs::is_regular_file(script, ec))
    throw Error(cmd + ": no plot scripts at '" + script.string() + "' (set KVSIM_PLOTS_DIR to the plots/ folder)");
  const std::string python = python_path();
  if (::access(python.c_str(), X_OK) != 0)
    throw Error(cmd + ": cannot run " + python + " (" + std::strerror(errno) +
                "; install python3-matplotlib python3-pandas python3-h5py python3-yaml, or set KVSIM_PYTHON)");
  std::vector<std::string> argv_s = {python, script.string()};
  argv_s.insert(argv_s.end(), pre.begin(), pre.end());
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);
  ::execv(python.c_str(), argv.data());
  throw Error(cmd + ": cannot run " + python + " (" + std::strerror(errno) + ")");
}

// This kvsim binary, for the scripts that run it.
std::string self_path() {
  std::error_code ec;
  const auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) throw Error("validate: cannot find this kvsim binary (/proc/self/exe: " + ec.message() + ")");
  return p.string();
}

}  // namespace

void add_plot(CLI::App& app) {
  CLI::App* c = app.add_subcommand("plot",
                                   "Figures (PNG and PDF): pareto, compare, heatmap, position, trace, memory, report; "
                                   "`kvsim plot --help` for the options");
  // Every argument goes to the script, --help included.
  c->prefix_command();
  c->set_help_flag();
  c->allow_extras();
  c->fallthrough(false);
  c->callback([c] { exec_script("plot", "kvsim_plot.py", {}, c->remaining()); });
}

void add_validate(CLI::App& app) {
  CLI::App* c = app.add_subcommand("validate",
                                   "Do the offline metrics predict live perplexity? Records texts, replays every "
                                   "configuration offline and live, writes a correlation report; "
                                   "`kvsim validate --help` for the options");
  c->prefix_command();
  c->set_help_flag();
  c->allow_extras();
  c->fallthrough(false);
  c->callback([c] { exec_script("validate", "kvsim_validate.py", {"--kvsim", self_path()}, c->remaining()); });
}

}  // namespace kvsim::tools
