// kvsim sweep CONFIG.yaml [--db F] [--shard I/N] [--backend ...] [--batch N] [--quiet]: every
// configuration of the sweep config x every trace, sequence and prefill into the results store,
// resumable (tools/sweep.h). Exit status 0, 1 when some run failed, 2 bad input, 130 on SIGINT
// (143 on SIGTERM).
#include <memory>

#include "sim/base/error.h"
#include "tools/commands.h"
#include "tools/sweep.h"

namespace kvsim::tools {

void add_sweep(CLI::App& app) {
  auto a = std::make_shared<SweepOptions>();
  auto mpi = std::make_shared<bool>(false);
  CLI::App* c =
      app.add_subcommand("sweep", "Run a grid of configurations over traces into the results store (resumable)");
  c->add_option("config", a->config, "sweep config (YAML; see configs/quick.yaml)")->required();
  c->add_option("--db", a->db, "results store (default: next to the config, CONFIG with .db for .yaml)");
  c->add_option("--shard", a->shard, "I/N: run only this shard's runs (run r belongs to shard r mod N)");
  c->add_option("--backend", a->backend,
                "ref, omp, cuda or auto (default: the config's backend, else auto = omp; cuda only when asked for)");
  c->add_option("--batch", a->batch, "configurations per replay (one reading of each layer)")->capture_default_str();
  c->add_option(
      "--stats-cache", a->stats_cache,
      "folder of the reference-statistics sidecar cache (default: $KVSIM_CACHE_DIR, else ~/.cache/kvsim; 'off': none)");
  c->add_option("--max-memory", a->max_memory,
                "most bytes one replay may hold (a layer's q, k, v and reference statistics; K, M, G, T suffixes); "
                "a trace needing more is refused")
      ->capture_default_str();
  c->add_flag("--mpi", *mpi, "distribute over MPI ranks (only in the MPI driver: mpirun -np N kvsim_mpi sweep ...)");
  c->add_flag("--quiet", a->quiet, "no progress on stderr");
  c->callback([a, mpi] {
    if (*mpi) {
#ifdef KVSIM_HAVE_MPI
      throw UsageError("--mpi: run the MPI driver instead: mpirun -np N kvsim_mpi sweep CONFIG.yaml ...");
#else
      throw NotCompiled("--mpi: kvsim was built without MPI (KVSIM_MPI=OFF or OpenMPI not found)");
#endif
    }
    exit_status() = run_sweep(*a);
  });
}

}  // namespace kvsim::tools
