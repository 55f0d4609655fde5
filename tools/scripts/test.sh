#!/usr/bin/env bash
# kvsim's full test suite, as CI runs it (.ci/run calls this script).
#  1. installs the Debian packages (tools/scripts/bootstrap.sh; skips what is present)
#  2. build/       Release, OpenMP, CUDA when nvcc is present (compiled with warnings as errors)
#  3. build-asan/  Debug with AddressSanitizer + UndefinedBehaviorSanitizer, CUDA off
#     then the fuzz smoke pass (tools/scripts/fuzz.sh --smoke: build-fuzz/ with clang, the libFuzzer
#     harnesses of tests/fuzz/ replay their regressions and run a fixed seed and count of executions,
#     about 6 s each; a finding fails the suite; skipped without clang)
#  4. build-noomp/ Release with OpenMP off (KVSIM_OPENMP=OFF), CUDA and benchmarks off: everything
#                  must build and test without OpenMP, and what needs it must report skipped
# and runs ctest in each. Tests labelled `slow` run in the Release build only.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/scripts/bootstrap.sh
jobs=$(nproc)

echo "== build/ (Release) =="
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DKVSIM_WERROR=ON >build.configure.log || { cat build.configure.log; exit 1; }
grep -A12 "kvsim .* configuration" build.configure.log || true
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"

echo "== build-asan/ (Debug, address+undefined sanitizers, CUDA off) =="
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DKVSIM_SANITIZE=address,undefined -DKVSIM_CUDA=OFF \
  -DKVSIM_BENCH=OFF -DKVSIM_WERROR=ON >build-asan.configure.log || { cat build-asan.configure.log; exit 1; }
grep -A12 "kvsim .* configuration" build-asan.configure.log || true
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j"$jobs" -LE slow

echo "== build-fuzz/ (clang, libFuzzer + address+undefined sanitizers: smoke pass) =="
bash tools/scripts/fuzz.sh --smoke

echo "== build-noomp/ (Release, OpenMP off, CUDA off) =="
cmake -S . -B build-noomp -DCMAKE_BUILD_TYPE=Release -DKVSIM_OPENMP=OFF -DKVSIM_CUDA=OFF -DKVSIM_BENCH=OFF \
  -DKVSIM_WERROR=ON >build-noomp.configure.log || { cat build-noomp.configure.log; exit 1; }
grep -A12 "kvsim .* configuration" build-noomp.configure.log || true
cmake --build build-noomp -j"$jobs"
ctest --test-dir build-noomp --output-on-failure -j"$jobs" -LE slow
