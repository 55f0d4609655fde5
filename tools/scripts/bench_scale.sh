#!/usr/bin/env bash
# Scale benchmark on the Llama-3-8B shape (H = 32, Hkv = 8, D = 128): every figure printed as a
# ratio to a limit or a baseline measured in the same run (medians of --reps runs).
#   tools/scripts/bench_scale.sh [--build DIR] [--tokens "2048 4096"] [--configs N] [--reps R]
#                                [--rss-tokens T] [--rss-layers "2 8"]
#  1. the machine's limits: fp32 FMA peak and read bandwidth, 1 and all threads (bench_peak)
#  2. reference statistics (omp attn_stats) as a fraction of the all-thread fp32 peak, per T
#  3. one run of 32 h2o configurations (budgets 64..512, one replay) against one h2o:256 run, the
#     reference computed in both (--stats-cache off)
#  4. N eviction configurations (window/streaming/h2o/tova budgets spread over 16..1024) in one
#     sweep over a 2-layer slice, against the cost of the reference statistics alone
#  5. kivi:bits=2, nf4 and cms_aggregate:256 against h2o:256, the reference cached (warm sidecar)
#  6. reading a float16 trace (bench_trace_io BM_trace_read warm) against `cat FILE > /dev/null`
#  7. peak resident memory of a run for two layer counts at --rss-tokens: bounded by one layer's
#     working set means it does not grow with L
# Synthetic traces (kvsim synth, marked synthetic) in a temporary folder; nothing else is written.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=build tokens="2048 4096" configs=1000 reps=3 rss_tokens=8192 rss_layers="2 8"
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --configs) configs=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --rss-tokens) rss_tokens=$2; shift 2 ;;
    --rss-layers) rss_layers=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "bench_scale.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
kvsim=$build/kvsim
py=${PYTHON:-/usr/bin/python3}
for f in "$kvsim" "$build/tests/bench_peak" "$build/tests/bench_ref_stats" "$build/tests/bench_trace_io"; do
  [ -x "$f" ] || { echo "bench_scale.sh: $f not found (build with KVSIM_BENCH=ON first)" >&2; exit 2; }
done
work=$(mktemp -d /tmp/kvsim-bench-scale.XXXXXX)
trap 'rm -rf "$work"' EXIT

# measure R CMD...: runs CMD R times; prints "wall_median cpu_median maxrss_kib_max".
measure() {
  "$py" - "$@" <<'PY'
import resource, statistics, subprocess, sys, time
reps, cmd = int(sys.argv[1]), sys.argv[2:]
walls, cpus, rss = [], [], 0
for _ in range(reps):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    walls.append(time.perf_counter() - t)
    if p.returncode != 0:
        sys.exit(f"bench_scale.sh: {' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-300:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    rss = max(rss, after.ru_maxrss)
print(f"{statistics.median(walls):.4f} {statistics.median(cpus):.4f} {rss}")
PY
}
# gbench BIN FILTER COUNTER: median of the counter over --reps repetitions of the first match.
gbench() {
  "$1" --benchmark_filter="$2" --benchmark_repetitions="$reps" --benchmark_out="$work/gbench.json" \
    --benchmark_out_format=json >/dev/null 2>&1 || { echo "bench_scale.sh: $1 failed" >&2; exit 1; }
  "$py" -c '
import json, statistics, sys
rows = [b[sys.argv[2]] for b in json.load(sys.stdin)["benchmarks"] if b.get("run_type") == "iteration"]
if not rows: sys.exit("bench_scale.sh: no result for " + sys.argv[1])
print(statistics.median(rows))' "$2" "$3" <"$work/gbench.json"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }

echo "== machine limits (bench_peak, medians of $reps)"
threads=$(nproc)
peak1=$(gbench "$build/tests/bench_peak" 'BM_fma_peak_1thread/' GFLOPs)
peakn=$(gbench "$build/tests/bench_peak" 'BM_fma_peak_all_threads/' GFLOPs)
bw1=$(gbench "$build/tests/bench_peak" 'BM_bandwidth_read_1thread/' GBps)
bwn=$(gbench "$build/tests/bench_peak" 'BM_bandwidth_read_all_threads/' GBps)
printf "fp32 FMA peak: %.0f GFLOP/s (1 thread), %.0f GFLOP/s (%s threads); read bandwidth %.1f / %.1f GB/s\n" \
  "$peak1" "$peakn" "$threads" "$bw1" "$bwn"
echo
printf "| figure | value | limit or baseline | ratio | target |\n| --- | ---: | ---: | ---: | --- |\n"

for T in $tokens; do
  g=$(gbench "$build/tests/bench_ref_stats" "BM_attn_stats_omp/$T/" GFLOPs)
  printf "| reference statistics, T = %s (omp, %s threads) | %.1f GFLOP/s | %.0f GFLOP/s fp32 peak | %s | >= 0.35 |\n" \
    "$T" "$threads" "$g" "$peakn" "$(ratio "$g" "$peakn")"
done

T0=${tokens%% *}
"$kvsim" synth --shape llama3-8b --tokens "$T0" --layers 2 --dtype float16 --out "$work/slice.h5" --quiet
h2o32=()
for j in $(seq 0 31); do h2o32+=("h2o:budget=$((64 + j * 448 / 31))"); done
read -r w1 c1 _ <<<"$(measure "$reps" "$kvsim" run --trace "$work/slice.h5" --strategy h2o:budget=256 --stats-cache off --quiet)"
read -r w32 c32 _ <<<"$(measure "$reps" "$kvsim" run --trace "$work/slice.h5" --strategy "${h2o32[@]}" --stats-cache off --quiet)"
printf "| 32 h2o configurations in one run, T = %s, 2 layers (reference included) | %.2f s CPU | %.2f s CPU (one h2o:256) | %s | <= 2.6 |\n" \
  "$T0" "$c32" "$c1" "$(ratio "$c32" "$c1")"

# The reference alone: a cold sidecar written by the cheapest configuration, minus nothing (an upper bound).
read -r wref cref _ <<<"$(measure 1 "$kvsim" run --trace "$work/slice.h5" --strategy window:budget=16 --stats-cache "$work/ref-cache" --quiet)"
"$py" - "$configs" "$work" "$T0" <<'PY'
import sys
n, work, T = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
names = ["window", "streaming", "h2o", "tova"]
by = {k: [] for k in names}
for j in range(n):
    by[names[j % 4]].append(str(16 + int((j + 0.5) * 1008 / n)))
with open(f"{work}/many.yaml", "w") as f:
    f.write(f"traces: [{work}/slice.h5]\nprefill: [{T // 2}]\nstride: 1\nstrategies:\n")
    for name, bs in by.items():
        if bs:
            f.write(f"  - name: {name}\n    grid: {{budget: [{', '.join(bs)}]}}\n")
PY
read -r wmany cmany _ <<<"$(measure 1 "$kvsim" sweep "$work/many.yaml" --db "$work/many.db" --stats-cache "$work/many-cache" --quiet)"
printf "| %s eviction configurations in one sweep, 2 layers, T = %s (reference included) | %.1f s wall | %.2f s wall (reference + window:16) | %s | < 4 |\n" \
  "$configs" "$T0" "$wmany" "$wref" "$(ratio "$wmany" "$wref")"

read -r wh ch _ <<<"$(measure "$reps" "$kvsim" run --trace "$work/slice.h5" --strategy h2o:budget=256 --stats-cache "$work/ref-cache" --quiet)"
for s in kivi:bits=2 nf4 cms_aggregate:budget=256; do
  read -r ws cs _ <<<"$(measure "$reps" "$kvsim" run --trace "$work/slice.h5" --strategy "$s" --stats-cache "$work/ref-cache" --quiet)"
  printf "| %s, T = %s, 2 layers (reference cached) | %.2f s CPU | %.2f s CPU (h2o:256) | %s | <= 3 |\n" "$s" "$T0" "$cs" "$ch" "$(ratio "$cs" "$ch")"
done

rd=$(gbench "$build/tests/bench_trace_io" 'BM_trace_read/1/1/' bytes_per_second)
cat_bps=$(gbench "$build/tests/bench_trace_io" 'BM_file_read_warm/1/' bytes_per_second)
printf "| reading a float16 trace (warm page cache) | %.2f GB/s | %.2f GB/s (cat-like read of the same file) | %s | >= 0.25 |\n" \
  "$(ratio "$rd" 1e9)" "$(ratio "$cat_bps" 1e9)" "$(ratio "$rd" "$cat_bps")"

rss_prev=""
for L in $rss_layers; do
  "$kvsim" synth --shape llama3-8b --tokens "$rss_tokens" --layers "$L" --dtype float16 --out "$work/rss$L.h5" --quiet
  read -r _ _ rss <<<"$(measure 1 "$kvsim" run --trace "$work/rss$L.h5" --strategy h2o:budget=256 --stats-cache off --stride 64 --quiet)"
  rm -f "$work/rss$L.h5"
  layer_mib=$(awk -v T="$rss_tokens" 'BEGIN {printf "%.0f", T * (32 + 8 + 8) * 128 * 4 / 1048576}')
  base=${rss_prev:-$rss}
  printf "| peak RSS of a run, L = %s, T = %s | %.0f MiB | %s MiB (one layer's q, k, v in float32); %.0f MiB at the first L | %s | equal across L |\n" \
    "$L" "$rss_tokens" "$(ratio "$rss" 1024)" "$layer_mib" "$(ratio "$base" 1024)" "$(ratio "$rss" "$base")"
  rss_prev=$base
done
