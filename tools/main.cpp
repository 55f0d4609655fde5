// kvsim: record attention traces once, replay them through many KV-cache strategies offline.
#include <cstdio>
#include <exception>
#include <string>

#include "sim/base/error.h"
#include "tools/commands.h"
#include "tools/version.h"

int main(int argc, char** argv) {
  CLI::App app{"kvsim " KVSIM_VERSION
               ": a simulator for KV-cache compression in LLM inference.\n"
               "Record attention traces once, then replay them through many cache strategies offline."};
  app.set_version_flag("--version", "kvsim " KVSIM_VERSION);
  app.require_subcommand(1);
  app.fallthrough();
  kvsim::tools::add_info(app);
  kvsim::tools::add_synth(app);
  kvsim::tools::add_generate(app);
  kvsim::tools::add_record(app);
  kvsim::tools::add_convert(app);
  kvsim::tools::add_run(app);
  kvsim::tools::add_plot(app);
  kvsim::tools::add_validate(app);
  kvsim::tools::add_sweep(app);
  kvsim::tools::add_best(app);
  kvsim::tools::add_ppl(app);
  kvsim::tools::add_capacity(app);
  kvsim::tools::add_prefix(app);
  kvsim::tools::add_heads(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "kvsim: error: %s (see --help)\n", kvsim::one_line(e.what()).c_str());
    return 2;
  } catch (const kvsim::Error& e) {
    std::fprintf(stderr, "kvsim: error: %s\n", e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "kvsim: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvsim: error: %s\n", kvsim::one_line(e.what()).c_str());
    return 1;
  }
  return kvsim::tools::exit_status();
}
