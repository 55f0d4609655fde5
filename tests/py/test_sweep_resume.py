#!/usr/bin/env python3
"""A sweep killed with SIGKILL at 12 seeded random moments, spread over the measured duration of an
uninterrupted run, and resumed each time, ends with exactly the rows and values of the
uninterrupted run (runs, summaries and curves compared row by row). Also: SIGINT commits the runs
in flight and exits 130; two shards writing one store concurrently equal one process.
configs/quick.yaml (two of its four sequences, to stay within a minute on 2 cores) on a copy of the
embedded trace. Run as: /usr/bin/python3 FILE --kvsim PATH"""
import os
import random
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from kvsim_testlib import Suite, parse_args, tempdir  # noqa: E402
from sweep_testlib import assert_same, count, dump, quick_config, sweep  # noqa: E402

SEED = 6
KILLS = 12
BATCH = "8"
SEQUENCES = ["cookies", "moon"]  # small batches: more commit points for the kills to land between


def main():
    a = parse_args()
    k = a.kvsim
    s = Suite()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    with tempdir() as base_dir, tempdir() as d:
        base_cfg = quick_config(base_dir, sequences=SEQUENCES)
        base_db = os.path.join(base_dir, "base.db")
        sweep(k, base_cfg, base_db, "--batch", BATCH, env=env)  # computes the sidecar
        os.remove(base_db)
        t0 = time.monotonic()
        sweep(k, base_cfg, base_db, "--batch", BATCH, env=env)
        duration = time.monotonic() - t0
        t0 = time.monotonic()
        sweep(k, base_cfg, base_db, "--batch", BATCH, env=env)  # nothing to do: the start-up cost
        startup = time.monotonic() - t0
        base = dump(base_db)
        n_runs = len(base["runs"])
        print(f"uninterrupted: {n_runs} runs in {duration:.2f}s, start-up {startup:.2f}s")

        # The reference-statistics sidecars are the same file for the same trace content: share
        # them, so that the measured duration (warm) is the duration the killed sweeps see.
        for f in os.listdir(base_dir):
            if f.endswith(".kvstats"):
                shutil.copyfile(os.path.join(base_dir, f), os.path.join(d, f))

        def kill_and_resume():
            cfg = quick_config(d, sequences=SEQUENCES)
            db = os.path.join(d, "killed.db")
            rng = random.Random(SEED)
            # Moments on the sweep's own timeline (0..duration), seeded. A killed attempt loses its
            # batch in flight, so each attempt runs until the timeline position of the runs already
            # committed reaches the next moment, but never more than 60% of what is left (so that a
            # machine faster now than when measured does not finish the sweep before the last kill).
            moments = sorted(rng.uniform(0, duration) for _ in range(KILLS))
            killed_alive, progress = 0, []
            for m in moments:
                done = count(db, "SELECT count(*) FROM runs WHERE status='done'")
                committed = duration * done / n_runs
                wait = min(max(m - committed, 0.03 * duration), 0.6 * (duration - committed))
                p = subprocess.Popen([k, "sweep", cfg, "--db", db, "--quiet", "--batch", BATCH],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
                time.sleep(startup + wait)
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
                    killed_alive += 1
                p.wait()
                progress.append(count(db, "SELECT count(*) FROM runs WHERE status='done'"))
            print(f"kill moments {[round(x, 2) for x in moments]} s of {duration:.2f} s; "
                  f"runs done after each kill: {progress} of {n_runs}")
            assert killed_alive >= 10, f"only {killed_alive} kills hit a running sweep"
            assert len({x for x in progress if 0 < x < n_runs}) >= 3, "the kills did not land across the sweep"
            r = sweep(k, cfg, db, "--batch", BATCH, env=env)
            assert "0 failed" in r.stdout, r.stdout
            assert_same(dump(db), base, "killed and resumed")
        s.check(f"SIGKILL at {KILLS} random moments, resumed each time: same rows and values", kill_and_resume)

        def stop_signal(sig, code):
            def check():
                cfg = quick_config(d, sequences=SEQUENCES)
                db = os.path.join(d, f"sig{code}.db")
                p = subprocess.Popen([k, "sweep", cfg, "--db", db, "--quiet", "--batch", BATCH],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                time.sleep(startup + duration / 2)
                p.send_signal(sig)
                out, err = p.communicate()
                assert p.returncode == code, (p.returncode, err)
                assert "interrupted" in err and "resume" in err, err
                done = count(db, "SELECT count(*) FROM runs WHERE status='done'")
                assert 0 < done < n_runs, done
                assert count(db, "SELECT count(*) FROM runs r WHERE NOT EXISTS "
                                 "(SELECT 1 FROM summaries s WHERE s.run_id = r.id)") == 0
                sweep(k, cfg, db, env=env)
                assert_same(dump(db), base, "interrupted and resumed")
            return check
        s.check("SIGINT: finishes the batch in flight, exit 130, resumes to the same rows", stop_signal(signal.SIGINT, 130))
        s.check("SIGTERM (SLURM time limit): the same, exit 143", stop_signal(signal.SIGTERM, 143))

        def two_shards():
            cfg = quick_config(d, sequences=SEQUENCES)
            db = os.path.join(d, "shards.db")
            one = dict(env, OMP_NUM_THREADS="1")
            ps = [subprocess.Popen([k, "sweep", cfg, "--db", db, "--quiet", "--shard", f"{i}/2"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=one)
                  for i in range(2)]
            outs = [p.communicate() for p in ps]
            assert all(p.returncode == 0 for p in ps), outs
            n0 = count(db, "SELECT count(*) FROM runs")
            assert n0 == n_runs, (n0, n_runs)
            assert_same(dump(db), base, "two shards")
        s.check("two shards into one store, concurrently: same rows and values as one process", two_shards)
    s.finish()


if __name__ == "__main__":
    main()
