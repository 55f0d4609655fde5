#!/usr/bin/env bash
# Packs a CUDA build for a machine that has a GPU but not this project's Debian libraries (the
# workplace's device machines: nvcc, cuBLAS and CMake, no HDF5/xtensor/doctest): the programs, every
# shared library they load except the CUDA driver and toolkit libraries (taken from the GPU
# machine), this machine's dynamic loader, and ../shared/models. Output: .gpu/bundle.tar.xz (about
# 20 MB), unpacked and run there by tools/scripts/gpu_run.sh.
#   tools/scripts/gpu_bundle.sh [BUILD_DIR]      (BUILD_DIR: a CUDA build, default build)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
grep -q "KVSIM_CUDA_ON:INTERNAL=ON\|^KVSIM_CUDA:STRING=ON" "$build/CMakeCache.txt" 2>/dev/null ||
  grep -q "KVSIM_HAVE_CUDA" "$build/CMakeFiles/kvsim_sim.dir/flags.make" 2>/dev/null ||
  { echo "gpu_bundle: $build is not a CUDA build (configure with -DKVSIM_CUDA=ON)" >&2; exit 2; }
stage=$(mktemp -d /tmp/kvsim-gpu-bundle.XXXXXX)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" "$stage/shared"
progs=("$build/kvsim" "$build/tests/kvsim_tests")
for p in "$build"/tests/bench_*; do [ -x "$p" ] && progs+=("$p"); done
[ -x "$build/tools/mpi/kvsim_mpi" ] && progs+=("$build/tools/mpi/kvsim_mpi")
for p in "${progs[@]}"; do cp "$p" "$stage/bin/"; done
# Libraries: everything ldd resolves, less the CUDA driver/toolkit (the GPU machine's own must be
# used: the driver matches its kernel module) and the vDSO.
for p in "${progs[@]}"; do ldd "$p"; done | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' |
  sort -u | grep -Ev '/libcuda\.so|/libcudart\.so|/libcublas(Lt)?\.so|/libnvidia' |
  while read -r lib; do cp -L "$lib" "$stage/lib/"; done
loader=$(ldd "$build/kvsim" | awk '$1 ~ /ld-linux/ {print $1}')
cp -L "$loader" "$stage/lib/ld-linux-x86-64.so.2"
[ -d ../shared/models ] && cp -r ../shared/models "$stage/shared/"
mkdir -p .gpu
tar -C "$stage" -cJf .gpu/bundle.tar.xz .
echo "gpu_bundle: .gpu/bundle.tar.xz $(du -h .gpu/bundle.tar.xz | cut -f1) ($(ls "$stage/bin" | wc -l) programs, $(ls "$stage/lib" | wc -l) libraries)"
