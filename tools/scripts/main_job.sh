#!/usr/bin/env bash
# kvsim's main job on the embedded default: installs packages, builds, sweeps the quick grid on the
# embedded real trace (stories260K) into out/quick.db and prints the grid-search answer.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/scripts/bootstrap.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
mkdir -p out
# Resumable: rerunning skips the runs already in out/quick.db (delete it to start over).
./build/kvsim sweep configs/quick.yaml --db out/quick.db
./build/kvsim best --db out/quick.db --metric kl --max-ratio 0.25 --format markdown | tee out/quick-best.md

# ---- plots (added by the plots issue): figures from out/quick.db go here ----
