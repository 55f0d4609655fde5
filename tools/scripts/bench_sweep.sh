#!/usr/bin/env bash
# Sweep throughput on the embedded trace: N = 1, 10, 100, 1000 configurations (window, streaming,
# h2o, knorm, tova over a budget grid), one sequence (cookies), prefill 64, stride 1, a warm
# reference-statistics sidecar. Prints configurations per second and the cost of N relative to one.
#   tools/scripts/bench_sweep.sh [build/kvsim] [--batch B]
set -euo pipefail
cd "$(dirname "$0")/../.."
kvsim=${1:-build/kvsim}
shift || true
work=$(mktemp -d /tmp/kvsim-bench-sweep.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp traces/samples/stories260K.h5 "$work/"
config() {  # config N: the first N configurations of a 1,000-point grid
  local n=$1
  /usr/bin/python3 - "$n" "$work" <<'PY'
import sys
n, work = int(sys.argv[1]), sys.argv[2]
specs = []
for b in range(8, 508):       # budgets 8..507
    for s in ("window", "h2o"):
        specs.append(f"{s}:budget={b}")
specs = specs[:n]
with open(f"{work}/n{n}.yaml", "w") as f:
    f.write(f"traces: [{work}/stories260K.h5]\nsequences: [cookies]\nprefill: [64]\nstride: 1\nstrategies:\n")
    by = {}
    for sp in specs:
        name, b = sp.split(":budget=")
        by.setdefault(name, []).append(b)
    for name, bs in by.items():
        f.write(f"  - name: {name}\n    grid: {{budget: [{', '.join(bs)}]}}\n")
PY
}
for n in 1 10 100 1000; do config "$n"; done
"$kvsim" sweep "$work/n1.yaml" --db "$work/warm.db" --quiet "$@" >/dev/null  # sidecar
printf "%6s %10s %12s %10s\n" N seconds configs/s "cost/N=1"
t1=""
for n in 1 10 100 1000; do
  start=$(date +%s.%N)
  "$kvsim" sweep "$work/n$n.yaml" --db "$work/n$n.db" --quiet "$@" >/dev/null
  end=$(date +%s.%N)
  s=$(echo "$end - $start" | bc -l)
  [ -z "$t1" ] && t1=$s
  printf "%6d %10.2f %12.1f %10.1f\n" "$n" "$s" "$(echo "$n / $s" | bc -l)" "$(echo "$s / $t1" | bc -l)"
done
