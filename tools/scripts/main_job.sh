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
# Figures: the embedded real trace where the checkout has it, else the synthetic one.
trace=traces/samples/stories260K.h5
[ -f "$trace" ] || trace=out/synthetic-tiny.h5
./build/kvsim plot trace --trace "$trace" --out out/plots --quiet
echo "trace analysis: out/plots/trace.png (and .pdf)"
# The quick sweep (issue 6) writes out/results.db; the main job ends with the report figure.
if [ -f out/results.db ]; then
  ./build/kvsim plot report --db out/results.db --trace "$trace" --out out/plots --quiet
  echo "report figure: out/plots/report.png (and .pdf)"
fi
