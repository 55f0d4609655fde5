"""A trace writer killed with SIGKILL at any moment never leaves a file that reads as a complete
trace unless it is one: the final NAME.h5 does not exist until the atomic rename, and the
NAME.h5.partial left behind is either rejected by `kvsim info` (exit 2, one line) or, when the kill
fell between `complete = 1` and the rename, holds exactly the tensors of an uninterrupted write. Kill moments are spread over the measured
duration of an uninterrupted write, seeded for reproducibility."""
import os
import random
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from kvsim_testlib import Suite, parse_args, run, tempdir  # noqa: E402

KILLS = 10


def same_as_reference(path, reference):
    import h5py
    import numpy as np
    with h5py.File(path, "r") as a, h5py.File(reference, "r") as b:
        assert a.attrs["complete"] == 1
        for name, seq in b["sequences"].items():
            for l, layer in seq["layers"].items():
                for kind, ds in layer.items():
                    assert np.array_equal(a[f"sequences/{name}/layers/{l}/{kind}"][...], ds[...]), (name, l, kind)


def main():
    args = parse_args()
    s = Suite()
    with tempdir() as d:
        out = os.path.join(d, "big.h5")
        cmd = [args.kvsim, "synth", "--shape", "llama3-8b", "--layers", "4", "--tokens", "512", "--seed", "1",
               "--out", out, "--quiet"]
        t0 = time.monotonic()
        r = run(cmd)
        duration = time.monotonic() - t0
        assert r.returncode == 0, r.stderr
        assert run([args.kvsim, "info", out]).returncode == 0
        reference = os.path.join(d, "reference.h5")
        os.rename(out, reference)
        print(f"uninterrupted write: {duration:.2f} s")

        # Kill moments are drawn from [0, 0.9 x the writer's duration]; the duration estimate shrinks
        # whenever a writer finished before its kill (machine load changes how long a write takes),
        # so that at least KILLS kills land mid-write within a bounded number of attempts.
        rng = random.Random(20261122)
        outcomes = {"killed before rename": 0, "finished before the kill": 0}
        estimate = duration
        attempt = 0
        while outcomes["killed before rename"] < KILLS and attempt < 4 * KILLS:
            attempt += 1
            delay = rng.uniform(0.0, estimate * 0.9)

            def one_kill(delay=delay):
                nonlocal estimate
                p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(delay)
                p.send_signal(signal.SIGKILL)
                p.wait()
                partial = out + ".partial"
                if os.path.exists(out):
                    # The rename happened: the file must be complete and valid.
                    r = run([args.kvsim, "info", out, "--check"])
                    assert r.returncode == 0, f"renamed file does not validate: {r.stderr}"
                    outcomes["finished before the kill"] += 1
                    estimate *= 0.7
                    os.remove(out)
                else:
                    outcomes["killed before rename"] += 1
                if os.path.exists(partial):
                    r = run([args.kvsim, "info", partial])
                    if r.returncode == 0:
                        # Killed after `complete = 1` reached the disk but before the rename: then
                        # every tensor must be there, equal to an uninterrupted write's.
                        same_as_reference(partial, reference)
                        outcomes["complete but not renamed"] = outcomes.get("complete but not renamed", 0) + 1
                    else:
                        lines = r.stderr.strip().splitlines()
                        assert r.returncode == 2, f"partial file after kill at {delay:.3f}s: exit {r.returncode} {r.stderr}"
                        assert len(lines) == 1 and partial in lines[0], r.stderr
                    os.remove(partial)
            s.check(f"SIGKILL #{attempt} at {delay:.3f} s", one_kill)
        print(f"outcomes after {attempt} attempts: {outcomes}")

        def enough_kills_midway():
            assert outcomes["killed before rename"] >= KILLS, outcomes
        s.check(f"at least {KILLS} kills landed mid-write", enough_kills_midway)
    s.finish()


if __name__ == "__main__":
    main()
