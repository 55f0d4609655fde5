#!/usr/bin/env bash
# Every GPU figure issue 8 asks for, in one run (on a machine with a CUDA device; elsewhere each
# program says "skipped: no CUDA device (...)"):
#   1. reference statistics on a llama3-8b-shape slice (T = 512, 2048, 4096), GFLOP/s and the
#      fractions of the device's measured fp32 and fp64 peaks, against omp on the same machine;
#   2. a sweep's configurations per second, --backend cuda against --backend omp (bench_sweep.sh,
#      N = 1, 10, 100);
#   3. recording overhead against a plain GPU forward (stories260K, 7B-width slice);
#   4. codec kernel throughput against the device-to-device copy.
# Run from the repository root with a CUDA build in build/ (or through tools/scripts/gpu_run.sh on
# a GPU machine that lacks the Debian libraries). Medians of --repetitions 3 where repeated.
#   tools/scripts/bench_gpu.sh [build]
set -uo pipefail
cd "$(dirname "$0")/../.."
b=${1:-build}
rep=(--benchmark_repetitions=3 --benchmark_report_aggregates_only=true)
echo "== 1. reference statistics (llama3-8b shape, H = 32, Hkv = 8, D = 128)"
"$b/tests/bench_ref_stats" --benchmark_filter='cuda|omp' "${rep[@]}"
echo "== 2. sweep throughput, embedded trace (T = 512, P = 64): omp, then cuda"
PYTHON=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3)} bash tools/scripts/bench_sweep.sh "$b/kvsim" --max-n 100 --backend omp
PYTHON=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3)} bash tools/scripts/bench_sweep.sh "$b/kvsim" --max-n 100 --backend cuda
echo "== 3. recording overhead on the GPU"
"$b/tests/bench_cuda_forward" "${rep[@]}"
echo "== 4. codec kernels"
"$b/tests/bench_cuda_quant" "${rep[@]}"
