#!/usr/bin/env bash
# kvsim's main job on the embedded default: installs packages, builds, validates the embedded real
# trace (stories260K), sweeps the quick grid over it into out/quick.db (resumable: rerunning skips
# finished runs; delete the file to start over), prints the grid-search answer and ends with the
# report figure.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/scripts/bootstrap.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
mkdir -p out
trace=traces/samples/stories260K.h5
./build/kvsim info "$trace" --check
./build/kvsim sweep configs/quick.yaml --db out/quick.db
./build/kvsim best --db out/quick.db --metric kl --max-ratio 0.25 --format markdown | tee out/quick-best.md
for kind in pareto compare position heatmap; do
  ./build/kvsim plot "$kind" --db out/quick.db --out out/plots --quiet
done
./build/kvsim plot trace --trace "$trace" --out out/plots --quiet
./build/kvsim plot report --db out/quick.db --trace "$trace" --out out/plots --quiet
echo
echo "results store: out/quick.db; best table: out/quick-best.md"
echo "figures: out/plots/{pareto,compare,position,heatmap,trace}.png and the report, out/plots/report.png (and .pdf)"
