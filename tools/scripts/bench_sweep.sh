#!/usr/bin/env bash
# Sweep throughput on the embedded trace: N = 1, 10, 100, 1000 configurations (window and h2o,
# budgets spread evenly over 8..507 so that every N has the same mean cost per configuration), one
# sequence (cookies, T = 512), prefill 64, stride 1, a warm reference-statistics sidecar, a fresh
# store each. Prints wall seconds, configurations per second and the cost of N relative to one.
#   tools/scripts/bench_sweep.sh [build/kvsim] [--batch B] [--backend omp|cuda] [--max-n N]
# (PYTHON: the interpreter that writes the configs, default /usr/bin/python3.)
set -euo pipefail
cd "$(dirname "$0")/../.."
kvsim=${1:-build/kvsim}
shift || true
max_n=1000
sweep_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --max-n) max_n=$2; shift 2 ;;
    *) sweep_args+=("$1"); shift ;;
  esac
done
ns=()
for n in 1 10 100 1000; do [ "$n" -le "$max_n" ] && ns+=("$n"); done
work=$(mktemp -d /tmp/kvsim-bench-sweep.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp traces/samples/stories260K.h5 "$work/"
config() {  # config N: N configurations whose budgets spread evenly over 8..507 (same mean cost)
  local n=$1
  "${PYTHON:-/usr/bin/python3}" - "$n" "$work" <<'PY'
import sys
n, work = int(sys.argv[1]), sys.argv[2]
by = {"window": [], "h2o": []}
for j in range(n):
    by["window" if j % 2 == 0 else "h2o"].append(str(8 + int((j + 0.5) * 500 / n)))
with open(f"{work}/n{n}.yaml", "w") as f:
    f.write(f"traces: [{work}/stories260K.h5]\nsequences: [cookies]\nprefill: [64]\nstride: 1\nstrategies:\n")
    for name, bs in by.items():
        if bs:
            f.write(f"  - name: {name}\n    grid: {{budget: [{', '.join(bs)}]}}\n")
PY
}
for n in "${ns[@]}"; do config "$n"; done
"$kvsim" sweep "$work/n1.yaml" --db "$work/warm.db" --quiet ${sweep_args[@]+"${sweep_args[@]}"} >/dev/null  # sidecar
printf "%6s %10s %12s %10s\n" N seconds configs/s "cost/N=1"
t1=""
for n in "${ns[@]}"; do
  start=$(date +%s.%N)
  "$kvsim" sweep "$work/n$n.yaml" --db "$work/n$n.db" --quiet ${sweep_args[@]+"${sweep_args[@]}"} >/dev/null
  end=$(date +%s.%N)
  s=$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')
  [ -z "$t1" ] && t1=$s
  awk -v n="$n" -v s="$s" -v t1="$t1" 'BEGIN {printf "%6d %10.2f %12.1f %10.1f\n", n, s, n / s, s / t1}'
done
