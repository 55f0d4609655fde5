// CUDA device discovery. Built from device.cu with CUDA, from stub.cpp without it; the stub's
// calls that need a GPU throw NotCompiled("built without CUDA").
#pragma once

#include <string>

namespace kvsim::cuda {

bool built_with_cuda();
int device_count();                        // 0 without CUDA or without a device
std::string device_error();                // why device_count() is 0 ("" otherwise)
std::string device_name(int device = -1);  // "cuda:<name>" (-1: the selected device); throws NotCompiled/CudaError
void require_device();                     // throws NotCompiled without CUDA, CudaError without a device
// Makes this process use one device: $KVSIM_CUDA_DEVICE if set (UsageError unless an index below
// device_count()), else the MPI/Slurm local rank modulo the device count (OMPI_COMM_WORLD_LOCAL_RANK,
// MPI_LOCALRANKID, SLURM_LOCALID), so the ranks of `kvsim_mpi` on one node spread over its GPUs;
// else device 0. Returns the index. Idempotent.
int select_device();

// The device's measured arithmetic peak in GFLOP/s (2 per FMA): independent FMA chains in every
// thread of enough blocks to fill all SMs; fp64 = false for float, true for double. Benchmarks
// quote kernels as fractions of it.
double measured_peak_gflops(bool fp64);

}  // namespace kvsim::cuda
