#!/usr/bin/env python3
"""`mpirun -np 2` and `-np 3` of the MPI sweep driver (kvsim_mpi, next to kvsim) give the same rows
and values as one process, on configs/quick.yaml. Skipped (exit 77, which ctest reports as Skipped),
saying why, when kvsim was built without MPI or mpirun is absent. Run as: /usr/bin/python3 FILE --kvsim PATH"""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from kvsim_testlib import Suite, parse_args, skip, tempdir  # noqa: E402
from sweep_testlib import assert_same, dump, quick_config, sweep  # noqa: E402


def main():
    a = parse_args()
    driver = os.path.join(os.path.dirname(os.path.abspath(a.kvsim)), "kvsim_mpi")
    mpirun = shutil.which("mpirun")
    if not os.path.exists(driver):
        skip(f"{driver} not built (KVSIM_MPI off or OpenMPI not found)")
    if not mpirun:
        skip("mpirun not found (install openmpi-bin)")
    s = Suite()
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    with tempdir() as d:
        cfg = quick_config(d)
        base_db = os.path.join(d, "base.db")
        sweep(a.kvsim, cfg, base_db, env=env)
        base = dump(base_db)

        def ranks(n):
            def check():
                db = os.path.join(d, f"mpi{n}.db")
                cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", str(n), driver, "sweep", cfg,
                       "--db", db, "--quiet", "--batch", "4"]
                r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
                assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
                assert f"{n} MPI ranks" in r.stdout, r.stdout
                assert_same(dump(db), base, f"mpirun -np {n}")
                # Rerun: everything is done, nothing to do.
                r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
                assert r.returncode == 0 and " 0 runs done" in r.stdout, r.stdout
            return check
        s.check("mpirun -np 2: same rows and values as one process", ranks(2))
        s.check("mpirun -np 3 (two working ranks): same rows and values as one process", ranks(3))

        def bad_input():
            bad = os.path.join(d, "bad.yaml")
            with open(bad, "w") as f:
                f.write("traces: [%s]\nstrategies:\n  - name: h2oo\n" % os.path.join(d, "stories260K.h5"))
            r = subprocess.run([mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2", driver, "sweep", bad,
                                "--db", os.path.join(d, "bad.db")], capture_output=True, text=True, env=env, timeout=120)
            ours = [x for x in r.stderr.splitlines() if x.startswith("kvsim: error:")]
            assert r.returncode == 2 and len(ours) == 1 and "bad.yaml:3:" in ours[0], (r.returncode, r.stderr)
        s.check("mpirun with a bad config: our one line (from rank 0 only), exit 2", bad_input)
    s.finish()


if __name__ == "__main__":
    main()
