#!/usr/bin/env bash
# kvsim's main job on the embedded default: installs packages, builds, then runs the job.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/scripts/bootstrap.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
mkdir -p out
rm -f out/synthetic-tiny.h5
./build/kvsim synth --shape tiny --tokens 512 --seed 1 --out out/synthetic-tiny.h5
./build/kvsim info out/synthetic-tiny.h5 --check
./build/kvsim info traces/samples/stories260K.h5 --check  # the embedded real trace (issue 3)
