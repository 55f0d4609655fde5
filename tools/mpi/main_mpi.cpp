// kvsim_mpi: the MPI sweep driver. `mpirun -np N kvsim_mpi sweep CONFIG.yaml [--db F] [--shard I/N]
// [--backend ...] [--batch N] [--quiet]` takes the options of `kvsim sweep` (tools/mpi/sweep_mpi.h).
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "sim/base/error.h"
#include "tools/mpi/sweep_mpi.h"
#include "tools/version.h"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  CLI::App app{"kvsim_mpi " KVSIM_VERSION ": kvsim sweep distributed over MPI ranks (rank 0 writes the store)"};
  app.require_subcommand(1);
  kvsim::tools::SweepOptions a;
  CLI::App* c = app.add_subcommand("sweep", "Run a sweep config over MPI ranks into the results store (resumable)");
  c->add_option("config", a.config, "sweep config (YAML)")->required();
  c->add_option("--db", a.db, "results store (default: next to the config, CONFIG with .db for .yaml)");
  c->add_option("--shard", a.shard, "I/N: run only this shard's runs");
  c->add_option("--backend", a.backend, "ref, omp, cuda or auto");
  c->add_option("--batch", a.batch, "configurations per batch handed to a rank")->capture_default_str();
  c->add_option("--stats-cache", a.stats_cache, "folder of the reference-statistics sidecar ('off': none)");
  bool mpi_flag = false;
  c->add_flag("--mpi", mpi_flag, "accepted for symmetry with kvsim sweep");
  c->add_flag("--quiet", a.quiet, "no progress on stderr");
  int status = 0;
  try {
    app.parse(argc, argv);
    status = kvsim::tools::run_sweep_mpi(a);
  } catch (const CLI::ParseError& e) {
    if (rank == 0)
      status = app.exit(e);
    else
      status = e.get_exit_code() ? 2 : 0;
    if (status != 0) status = 2;
  } catch (const kvsim::Error& e) {
    std::fprintf(stderr, "kvsim: error: %s\n", e.what());
    status = e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvsim: error: %s\n", e.what());
    status = 1;
  }
  MPI_Finalize();
  return status;
}
