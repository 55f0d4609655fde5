#!/usr/bin/python3
"""Runs a Google Benchmark program and prints each benchmark's median throughput as a ratio to a
baseline benchmark measured in the same run (e.g. trace writes against plain disk writes).

  tools/scripts/bench_report.py build/tests/bench_trace_io --baseline BM_disk_write \
      --repetitions 3 [--filter REGEX]
"""
import argparse
import json
import statistics
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("program")
    ap.add_argument("--baseline", action="append", default=[],
                    help="NAME or PREFIX=NAME: benchmarks starting with PREFIX are compared to NAME")
    ap.add_argument("--repetitions", type=int, default=1)
    ap.add_argument("--filter", default="")
    ap.add_argument("--metric", default="bytes_per_second")
    a = ap.parse_args()
    cmd = [a.program, "--benchmark_format=json", f"--benchmark_repetitions={a.repetitions}"]
    if a.filter:
        cmd.append(f"--benchmark_filter={a.filter}")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench_report: {a.program} failed: {r.stderr.strip().splitlines()[-1:]}")
    runs = {}
    for b in json.loads(r.stdout)["benchmarks"]:
        if b.get("run_type") == "aggregate" or a.metric not in b:
            continue
        name = b["run_name"] + (f" [{b['label']}]" if b.get("label") else "")
        runs.setdefault(name, []).append(b[a.metric])
    med = {k: statistics.median(v) for k, v in runs.items()}
    base_of = []
    for spec in a.baseline:
        prefix, _, name = spec.rpartition("=")
        base_of.append((prefix, name))
    unit = 1e9 if a.metric == "bytes_per_second" else 1.0
    print(f"{'benchmark':44s} {'median':>12s}  {'vs baseline':>12s}")
    for name, v in med.items():
        ratio = ""
        for prefix, bname in base_of:
            if name.startswith(prefix) or not prefix:
                b = next((x for k, x in med.items() if k.startswith(bname)), None)
                if b:
                    ratio = f"{v / b:10.2f}x {bname}"
        shown = f"{v / unit:9.3f} GB/s" if a.metric == "bytes_per_second" else f"{v:12.4g}"
        print(f"{name:44s} {shown:>12s}  {ratio}")


if __name__ == "__main__":
    main()
