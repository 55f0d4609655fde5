// The MPI sweep driver: `mpirun -np N kvsim_mpi sweep CONFIG.yaml [options of kvsim sweep]`.
// Rank 0 owns the results store: it enumerates the pending batches (tools/sweep.h), hands them
// out one at a time to ranks 1..N-1 as they ask, and commits the runs each rank sends back, one
// transaction per run. Only rank 0 touches SQLite, so the store may sit on a node-local disk and
// the ranks on other nodes (traces and config must be readable by every rank).
// With -np 1, rank 0 runs the batches itself.
#pragma once

#include "tools/sweep.h"

namespace kvsim::tools {

// Returns the exit status on every rank (0, 1 some run failed, 2 bad input, 130 interrupted).
int run_sweep_mpi(const SweepOptions& opt);

}  // namespace kvsim::tools
