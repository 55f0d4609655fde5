#!/usr/bin/env python3
"""`kvsim sweep` and `kvsim best` through the binary: bad input gives one line and exit 2; a bad
trace among good ones is reported once, its runs are recorded as failed and the others complete
(exit 1); `best` answers in every format. Run as: /usr/bin/python3 test_sweep_cli.py --kvsim PATH"""
import csv
import io
import json
import os
import shutil
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(__file__))
from kvsim_testlib import Suite, one_line_error, parse_args, run, tempdir  # noqa: E402
from sweep_testlib import count, dump, quick_config, sweep  # noqa: E402


def main():
    a = parse_args()
    k = a.kvsim
    s = Suite()
    with tempdir() as d:
        def cfg(name, text):
            p = os.path.join(d, name)
            with open(p, "w") as f:
                f.write(text)
            return p

        good = quick_config(d)
        trace = os.path.join(d, "stories260K.h5")
        db = os.path.join(d, "bad.db")

        def yaml_error():
            p = cfg("y.yaml", f"traces: [{trace}]\nstrategies:\n  - name: h2o\n    grid: {{budget: [32, 64}}\n")
            one_line_error(run([k, "sweep", p, "--db", db]), "y.yaml:4:")
        s.check("YAML syntax error names the line", yaml_error)

        def unknown_strategy():
            p = cfg("u.yaml", f"traces: [{trace}]\nstrategies:\n  - name: full\n  - name: h2oo\n    grid: {{budget: [8]}}\n")
            one_line_error(run([k, "sweep", p, "--db", db]), "u.yaml:4:", "unknown strategy 'h2oo'", "valid:")
        s.check("unknown strategy names the config line and the valid names", unknown_strategy)

        def unknown_param():
            p = cfg("p.yaml", f"traces: [{trace}]\nstrategies:\n  - name: h2o\n    grid: {{budget: [8], bugdet: [3]}}\n")
            one_line_error(run([k, "sweep", p, "--db", db]), "p.yaml:3:", "unknown parameter 'bugdet'", "valid:")
        s.check("unknown parameter names the config line", unknown_param)

        def unreadable_trace():
            junk = os.path.join(d, "junk.h5")
            with open(junk, "w") as f:
                f.write("not hdf5\n")
            one_line_error(run([k, "sweep", quick_config(d, [junk], "j.yaml"), "--db", db]), "junk.h5")
            one_line_error(run([k, "sweep", quick_config(d, [os.path.join(d, "missing.h5")], "m.yaml"), "--db", db]),
                           "missing.h5")
        s.check("a sweep whose only trace is unreadable: one line, exit 2", unreadable_trace)

        def other_schema():
            old = os.path.join(d, "old.db")
            sweep(k, cfg("one.yaml", f"traces: [{trace}]\nsequences: [cookies]\nstrategies: [{{name: window, grid: {{budget: [32]}}}}]\n"), old)
            con = sqlite3.connect(old)
            con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
            con.commit()
            con.close()
            one_line_error(run([k, "sweep", good, "--db", old]), "schema_version = '99'")
            one_line_error(run([k, "best", "--db", old, "--metric", "kl"]), "schema_version = '99'")
        s.check("a store of another schema version: one line, exit 2", other_schema)

        def bad_options():
            one_line_error(run([k, "sweep", good, "--db", db, "--shard", "2/2"]), "--shard")
            one_line_error(run([k, "sweep", good, "--db", db, "--shard", "x"]), "--shard")
            one_line_error(run([k, "sweep", os.path.join(d, "nope.yaml")]), "nope.yaml")
            one_line_error(run([k, "sweep", good, "--db", os.path.join(d, "no", "dir", "x.db")]), "does not exist")
        s.check("bad --shard, missing config, missing db folder: one line, exit 2", bad_options)

        def entry_protocols():
            # kvzip runs under prefill only, at its scored context: under the root's evict it would never run, so
            # the sweep warns in one line; with the entry's own protocol and prefill it runs there alone.
            body = f"traces: [{trace}]\nsequences: [cookies]\nstride: 16\nstrategies:\n  - {{name: h2o, grid: {{budget: [16]}}}}\n"
            p = cfg("k1.yaml", body + "  - {name: kvzip, grid: {budget: [64]}}\n")
            r = run([k, "sweep", p, "--db", os.path.join(d, "k1.db"), "--quiet"])
            assert r.returncode == 0, r.stderr
            warn = [x for x in r.stderr.splitlines() if "warning" in x]
            assert len(warn) == 1 and "k1.yaml:6: 'kvzip:budget=64' runs under none of its protocols" in warn[0], r.stderr
            p = cfg("k2.yaml", body + "  - {name: kvzip, grid: {budget: [64]}, prefill: 384, protocol: prefill}\n")
            r = run([k, "sweep", p, "--db", os.path.join(d, "k2.db"), "--quiet"])
            assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
            con = sqlite3.connect(os.path.join(d, "k2.db"))
            rows = sorted(con.execute("SELECT DISTINCT strategy, prefill, protocol FROM results"))
            con.close()
            assert rows == [("h2o", 47, "evict"), ("kvzip", 384, "prefill")], rows
        s.check("an entry's own protocol and prefill; a configuration that runs nowhere is warned about", entry_protocols)

        mixed_db = os.path.join(d, "mixed.db")

        def bad_trace_among_good():
            junk = os.path.join(d, "junk2.h5")
            with open(junk, "wb") as f:
                f.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
            p = cfg("mixed.yaml", f"traces: [{junk}, {trace}]\nsequences: [cookies, rain]\nprefill: [64]\nstride: 4\n"
                    "strategies:\n  - name: window\n    grid: {budget: [32, 64]}\n  - name: h2o\n    grid: {budget: [32]}\n")
            r = run([k, "sweep", p, "--db", mixed_db, "--quiet"])
            assert r.returncode == 1, (r.returncode, r.stderr)
            lines = [x for x in r.stderr.splitlines() if x.strip()]
            assert len(lines) == 1 and "junk2.h5" in lines[0], r.stderr
            assert count(mixed_db, "SELECT count(*) FROM runs WHERE status='done'") == 6
            assert count(mixed_db, "SELECT count(*) FROM runs WHERE status='failed' AND error LIKE '%junk2.h5%'") == 3
            # Rerunning retries the failed runs only, and fails them again.
            r = run([k, "sweep", p, "--db", mixed_db, "--quiet"])
            assert r.returncode == 1 and "3 failed, 6 already done" in r.stdout, (r.stdout, r.stderr)
        s.check("a bad trace among good ones: reported, recorded as failed, the others complete", bad_trace_among_good)

        def bad_prefill_fails_its_runs():
            p = cfg("pf.yaml", f"traces: [{trace}]\nsequences: [cookies]\nprefill: [64, 600]\n"
                    "strategies: [{name: window, grid: {budget: [32]}}]\n")
            dbp = os.path.join(d, "pf.db")
            r = run([k, "sweep", p, "--db", dbp, "--quiet"])
            assert r.returncode == 1 and "P = 600" in r.stderr, (r.returncode, r.stderr)
            assert count(dbp, "SELECT count(*) FROM runs WHERE status='done' AND prefill=64") == 1
        s.check("a prefill longer than a sequence fails those runs only", bad_prefill_fails_its_runs)

        def best_formats():
            qdb = os.path.join(d, "q.db")
            p = cfg("b.yaml", f"traces: [{trace}]\nsequences: [cookies]\nprefill: [64]\nstride: 4\nstrategies:\n"
                    "  - name: full\n  - name: window\n    grid: {budget: [32, 64, 128]}\n"
                    "  - name: h2o\n    grid: {budget: [32, 64, 128]}\n")
            sweep(k, p, qdb)
            r = run([k, "best", "--db", qdb, "--metric", "kl", "--max-ratio", "0.3", "--format", "json"])
            assert r.returncode == 0, r.stderr
            j = json.loads(r.stdout)
            assert j["metric"] == "kl" and j["higher_is_better"] is False
            assert j["best"]["ratio"] <= 0.3
            front = j["front"]
            assert [f["ratio"] for f in front] == sorted(f["ratio"] for f in front)
            assert all(front[i]["kl"] > front[i + 1]["kl"] for i in range(len(front) - 1)), front
            assert front[-1]["strategy"] == "full"
            con = sqlite3.connect(qdb)
            pts = con.execute("SELECT c.spec, avg(r_.mean), avg(m_.mean) FROM runs r JOIN configs c ON c.id=r.config_id "
                              "JOIN summaries r_ ON r_.run_id=r.id AND r_.layer=-1 AND r_.metric='ratio' "
                              "JOIN summaries m_ ON m_.run_id=r.id AND m_.layer=-1 AND m_.metric='kl' "
                              "GROUP BY c.id").fetchall()
            con.close()
            fit = [x for x in pts if x[1] <= 0.3]
            assert j["best"]["spec"] == min(fit, key=lambda x: x[2])[0]
            for x in pts:  # nobody dominates a front point
                for f in front:
                    assert not (x[1] <= f["ratio"] and x[2] < f["kl"]), (x, f)
            r = run([k, "best", "--db", qdb, "--metric", "out_cos", "--max-ratio", "0.3", "--format", "json"])
            jc = json.loads(r.stdout)
            assert jc["higher_is_better"] is True
            assert all(jc["front"][i]["out_cos"] < jc["front"][i + 1]["out_cos"] for i in range(len(jc["front"]) - 1))
            r = run([k, "best", "--db", qdb, "--metric", "kl", "--max-ratio", "0.3", "--format", "csv", "--per-strategy"])
            rows = list(csv.DictReader(io.StringIO(r.stdout)))
            assert {x["table"] for x in rows} == {"best", "strategy_best", "front", "strategy_front"}, rows
            for fmt in ("text", "markdown"):
                r = run([k, "best", "--db", qdb, "--metric", "kl", "--max-ratio", "0.3", "--format", fmt])
                assert r.returncode == 0 and j["best"]["spec"] in r.stdout, r.stdout
            r = run([k, "best", "--db", qdb, "--metric", "kl", "--max-ratio", "0.01"])
            assert r.returncode == 0 and "no configuration fits" in r.stdout, r.stdout
            one_line_error(run([k, "best", "--db", qdb, "--metric", "kll"]), "unknown metric 'kll'", "out_cos")
            r = run([k, "best", "--db", qdb, "--metric", "kl", "--sequence", "cookies", "--prefill", "64", "--max-ratio", "0.3", "--format", "json"])
            assert json.loads(r.stdout)["best"] == j["best"], r.stdout
            one_line_error(run([k, "best", "--db", qdb, "--metric", "kl", "--sequence", "moon"]), "no finished runs match")
            empty = os.path.join(d, "empty.db")
            shutil.copyfile(qdb, empty)
            con = sqlite3.connect(empty)
            con.execute("DELETE FROM runs")
            con.commit()
            con.close()
            one_line_error(run([k, "best", "--db", empty, "--metric", "kl"]), "no finished runs")
            one_line_error(run([k, "best", "--db", os.path.join(d, "none.db"), "--metric", "kl"]), "no such")
            one_line_error(run([k, "best", "--db", qdb, "--metric", "kl", "--format", "xml"]), "--format")
        s.check("best: Pareto front, best under the budget, every format, bad input", best_formats)

        def run_db_is_a_sweep_run():
            rdb = os.path.join(d, "run.db")
            r = run([k, "run", "--trace", trace, "--strategy", "window:budget=32", "--strategy", "h2o:budget=32,gqa=mean",
                     "--prefill", "64", "--stride", "4", "--sequence", "cookies", "--db", rdb, "--quiet"])
            assert r.returncode == 0, r.stderr
            p = cfg("r.yaml", f"traces: [{trace}]\nsequences: [cookies]\nprefill: [64]\nstride: 4\nstrategies:\n"
                    "  - name: window\n    grid: {budget: [32]}\n  - name: h2o\n    grid: {budget: [32]}\n")
            r = sweep(k, p, rdb)
            assert "0 runs done, 0 failed, 2 already done" in r.stdout, r.stdout
            sdb = os.path.join(d, "sweep_of_run.db")
            sweep(k, p, sdb)
            a, b = dump(rdb), dump(sdb)
            assert a == b, "kvsim run --db and kvsim sweep wrote different rows"
        s.check("kvsim run --db writes the rows kvsim sweep writes (a sweep then skips them)", run_db_is_a_sweep_run)

        def mpi_flag():
            r = run([k, "sweep", good, "--db", db, "--mpi"])
            one_line_error(r, "--mpi")
        s.check("kvsim sweep --mpi points to the MPI driver (or says MPI is not built)", mpi_flag)
    s.finish()


if __name__ == "__main__":
    main()
