#!/usr/bin/env python3
"""`kvsim run` on inputs only h5py can make: a trace whose only sequence was deleted must be refused
with one line on stderr and exit code 2. Run as: /usr/bin/python3 test_run_cli.py --kvsim PATH"""
import argparse
import os
import subprocess
import sys
import tempfile

import h5py


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvsim", required=True)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        good = os.path.join(d, "tiny.h5")
        subprocess.run([a.kvsim, "synth", "--shape", "tiny", "--tokens", "40", "--seed", "1", "--out", good,
                        "--quiet"], check=True)
        empty = os.path.join(d, "empty.h5")
        with open(good, "rb") as src, open(empty, "wb") as dst:
            dst.write(src.read())
        with h5py.File(empty, "a") as f:
            for name in list(f["sequences"].keys()):
                del f["sequences"][name]
        r = subprocess.run([a.kvsim, "run", "--trace", empty, "--strategy", "full", "--quiet"],
                           capture_output=True, text=True)
        assert r.returncode == 2, (r.returncode, r.stderr)
        assert r.stderr.count("\n") == 1, r.stderr
        assert "no sequences" in r.stderr, r.stderr
        assert r.stdout == "", r.stdout
        # The good trace still runs, and the JSON has design.md §6's shape.
        r = subprocess.run([a.kvsim, "run", "--trace", good, "--strategy", "h2o:budget=8", "--json", "--quiet",
                            "--stats-cache", "off"], capture_output=True, text=True, check=True)
        import json
        j = json.loads(r.stdout)
        assert set(["trace", "prefill", "results"]) <= set(j), j.keys()
        s = j["results"][0]["summary"]["kl"]
        assert set(s) == {"mean", "p5", "p50", "p95", "worst"}, s
    print("ok")


if __name__ == "__main__":
    sys.exit(main())
