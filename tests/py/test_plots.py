"""`kvsim plot`: every kind renders from a small synthetic results store (plots/synth_store.py, which follows
sim/store/STORE.md) and a small synthetic trace; each PNG has the expected size in pixels and is not blank, each
PDF is a PDF; bad input is one line on stderr with exit status 2 (1 for a missing plots folder).

The renders run a few at a time: each is a Python process that spends most of its time importing matplotlib."""
import concurrent.futures
import os
import sqlite3
import struct
import sys

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
PLOTS = os.path.join(HERE, "..", "..", "plots")
sys.path.insert(0, HERE)
sys.path.insert(0, PLOTS)

from kvsim_testlib import Suite, parse_args, run, tempdir  # noqa: E402
import synth_store  # noqa: E402
from kvsim_style import SIZES  # noqa: E402

DPI = 150
WITH_PDF = {"pareto"}  # PDF once: drawing twice is most of a render's time


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    return struct.unpack(">II", head[16:24])


def check_png(path, size_in, min_colours=16):
    import matplotlib.image as mpimg
    import numpy as np

    w, h = png_size(path)
    want = (round(size_in[0] * DPI), round(size_in[1] * DPI))
    assert (w, h) == want, f"{path}: {w}x{h} pixels, expected {want[0]}x{want[1]}"
    img = mpimg.imread(path)[..., :3]
    assert img.var() > 1e-4, f"{path}: blank (pixel variance {img.var():.2e})"
    rgb = (img * 255).astype(np.uint32).reshape(-1, 3)
    colours = len(np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]))
    assert colours >= min_colours, f"{path}: only {colours} distinct colours"
    # not mostly one colour: the figure has content beyond a frame
    white = (img > 0.98).all(axis=2).mean()
    assert white < 0.97, f"{path}: {100 * white:.1f}% white"


def check_pdf(path):
    with open(path, "rb") as f:
        head = f.read(5)
    assert head == b"%PDF-", f"{path}: not a PDF"
    assert os.path.getsize(path) > 2000, f"{path}: only {os.path.getsize(path)} bytes"


def one_line_error(r, status, must_contain):
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == status, f"exit {r.returncode}, expected {status}; stderr: {r.stderr!r}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr: {r.stderr!r}"
    for s in must_contain:
        assert s in lines[0], f"{s!r} not in {lines[0]!r}"


def main():
    args = parse_args()
    kvsim = args.kvsim
    suite = Suite()
    with tempdir() as d:
        db = os.path.join(d, "results.db")
        synth_store.build(db, shape="stories260k", tokens=256, sequences=2, seed=3)
        trace = os.path.join(d, "tiny.h5")
        r = run([kvsim, "synth", "--shape", "tiny", "--tokens", "96", "--seed", "3", "--out", trace, "--quiet"])
        assert r.returncode == 0, r.stderr
        out = os.path.join(d, "figs")
        common = ["--out", out, "--dpi", str(DPI)]
        jobs = {
            "pareto": (["pareto", "--db", db], SIZES["pareto"]),
            "compare": (["compare", "--db", db, "--csv"], SIZES["compare"]),
            "heatmap": (["heatmap", "--db", db, "--config", "h2o:gqa=mean,ratio=0.25,recent=8,sinks=4",
                         "--size", "4x3"], (4.0, 3.0)),
            "position": (["position", "--db", db, "--metric", "mass"], SIZES["position"]),
            "trace": (["trace", "--trace", trace, "--steps", "16"], SIZES["trace"]),
            "memory": (["memory", "--db", db, "--shape", "llama3-8b", "--gpu-gib", "80", "--minus-weights"],
                       SIZES["memory"]),
            "report": (["report", "--db", db, "--trace", trace, "--steps", "16"], SIZES["report"]),
        }
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            futs = {name: pool.submit(run, [kvsim, "plot", *argv, *common, "--format",
                                            "png,pdf" if name in WITH_PDF else "png"])
                    for name, (argv, _) in jobs.items()}
            results = {name: f.result() for name, f in futs.items()}

        def render_check(name):
            def fn():
                r = results[name]
                assert r.returncode == 0, f"exit {r.returncode}: {r.stderr.strip()}"
                stem = jobs[name][0][0] if "--name" not in jobs[name][0] else name
                png, pdf = os.path.join(out, stem + ".png"), os.path.join(out, stem + ".pdf")
                want = [png, pdf] if name in WITH_PDF else [png]
                if "--csv" in jobs[name][0]:
                    want.append(os.path.join(out, stem + ".csv"))
                    with open(want[-1]) as f:
                        head = f.readline().strip().split(",")
                        assert "out_rel_l2" in head and "strategy" in head and len(f.readlines()) > 3, head
                assert r.stdout.split() == want, f"stdout {r.stdout!r}, expected {want}"
                check_png(png, jobs[name][1])
                if name in WITH_PDF:
                    check_pdf(pdf)
            return fn

        for name in jobs:
            suite.check(f"renders {name}", render_check(name))

        # --- bad input -----------------------------------------------------------------------------
        empty = os.path.join(d, "empty.db")
        synth_store.build(empty, empty=True)
        other = os.path.join(d, "v99.db")
        synth_store.build(other, tokens=64, sequences=1)
        con = sqlite3.connect(other)
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        con.commit()
        con.close()
        not_h5 = os.path.join(d, "not.h5")
        with open(not_h5, "w") as f:
            f.write("not an HDF5 file\n")
        bad = {
            "store with no runs": (["pareto", "--db", empty], 2, ["no finished runs"]),
            "unknown metric": (["pareto", "--db", db, "--metric", "perplexity"], 2,
                               ["unknown metric 'perplexity'", "out_rel_l2", "kl", "mass"]),
            "missing trace": (["trace", "--trace", os.path.join(d, "nope.h5")], 2, ["nope.h5", "no such trace"]),
            "missing store": (["pareto", "--db", os.path.join(d, "nope.db")], 2, ["nope.db", "no such"]),
            "unknown kind": (["scatter", "--db", db], 2, ["unknown plot kind 'scatter'", "pareto"]),
            "other schema version": (["pareto", "--db", other], 2, ["schema version 99"]),
            "not a trace": (["trace", "--trace", not_h5], 2, ["not.h5", "not an HDF5 trace"]),
            "trace for a store kind": (["pareto", "--db", db, "--trace", trace], 2, ["--trace does not apply"]),
            "option of another kind": (["pareto", "--db", db, "--shape", "llama3-8b"], 2, ["--shape"]),
            "unknown shape": (["memory", "--shape", "gpt5"], 2, ["unknown --shape 'gpt5'", "llama3-8b"]),
            "unknown strategy": (["pareto", "--db", db, "--strategy", "magic"], 2, ["magic", "h2o"]),
            "store kind without --db": (["compare"], 2, ["--db"]),
            "missing --out": (["pareto", "--db", db], 2, ["--out"]),
        }
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            futs = {}
            for name, (argv, _, _) in bad.items():
                extra = [] if name == "missing --out" else ["--out", os.path.join(d, "bad")]
                futs[name] = pool.submit(run, [kvsim, "plot", *argv, *extra])
            bad_results = {name: f.result() for name, f in futs.items()}
        for name, (_, status, must) in bad.items():
            suite.check(f"bad input: {name}", lambda n=name, s=status, m=must: one_line_error(bad_results[n], s, m))

        def no_plots_dir():
            env = dict(os.environ, KVSIM_PLOTS_DIR=os.path.join(d, "nowhere"))
            r = run([kvsim, "plot", "pareto", "--db", db, "--out", out], env=env)
            one_line_error(r, 1, ["nowhere", "KVSIM_PLOTS_DIR"])

        suite.check("missing plots folder: exit 1, one line", no_plots_dir)

        def no_output_on_error():
            assert not os.path.exists(os.path.join(d, "bad")), "a failed plot left an output folder"

        suite.check("failed plots write nothing", no_output_on_error)
        suite.check("pareto front and budget selection", check_front_logic)
        suite.check("runs under several protocols: one line per (strategy, protocol)",
                    lambda: check_protocols(kvsim, trace, d))
    suite.finish()


def check_protocols(kvsim, trace, d):
    """A real sweep under evict, prefill and sparse: the CSV has one row per (configuration, protocol),
    labelled 'h2o (prefill)'; a selector's x is its read_ratio from the store (queried here directly);
    --protocol keeps one protocol, whose labels then carry no suffix."""
    import csv

    cfg = os.path.join(d, "protocols.yaml")
    with open(cfg, "w") as f:
        f.write("name: protocols\ntraces: [%s]\nprefill: [48]\nprotocol: [evict, prefill, sparse]\nstride: 4\n"
                "strategies:\n  - {name: h2o, grid: {budget: [16, 32]}}\n"
                "  - {name: oracle_topk, grid: {budget: [8]}}\n" % trace)
    db = os.path.join(d, "protocols.db")
    r = run([kvsim, "sweep", cfg, "--db", db, "--quiet"])
    assert r.returncode == 0, r.stderr
    out = os.path.join(d, "proto_figs")

    def rows(*extra):
        r = run([kvsim, "plot", "pareto", "--db", db, "--out", out, "--dpi", str(DPI), "--format", "png", "--csv",
                 *extra])
        assert r.returncode == 0, r.stderr
        with open(os.path.join(out, "pareto.csv")) as f:
            return list(csv.DictReader(f))

    got = rows()
    labels = sorted({(x["strategy"], x["protocol"]) for x in got})
    assert labels == [("h2o", "evict"), ("h2o (prefill)", "prefill"), ("oracle_topk (sparse)", "sparse")], labels
    assert len(got) == 5, got
    con = sqlite3.connect(db)
    read = con.execute("SELECT s.mean FROM summaries s JOIN runs r ON r.id = s.run_id "
                       "WHERE s.layer = -1 AND s.metric = 'read_ratio' AND r.protocol = 'sparse'").fetchall()
    con.close()
    sparse = [float(x["ratio"]) for x in got if x["protocol"] == "sparse"]
    assert len(read) == 1 and abs(sparse[0] - read[0][0]) < 1e-6, (sparse, read)
    assert sparse[0] < 0.9, sparse  # what it reads, not the full cache it holds (ratio 1)
    only = rows("--protocol", "prefill")
    assert sorted({x["strategy"] for x in only}) == ["h2o"] and len(only) == 2, only


def check_front_logic():
    import pandas as pd
    from kvsim_store import best_under, pareto_front

    df = pd.DataFrame({"strategy": ["a", "a", "b", "b", "c"], "ratio": [0.1, 0.5, 0.1, 0.3, 1.0],
                       "value": [0.5, 0.1, 0.4, 0.3, 0.0]})
    assert sorted(pareto_front(df, "out_rel_l2")) == [1, 2, 3, 4], pareto_front(df, "out_rel_l2")
    # higher is better for mass: (0.1, 0.5) dominates (0.1, 0.4); (0.5, 0.1) is dominated by (0.1, 0.5)
    assert sorted(pareto_front(df, "mass")) == [0], pareto_front(df, "mass")
    pick = best_under(df, 0.3, "out_rel_l2").set_index("strategy").value.to_dict()
    assert pick == {"a": 0.5, "b": 0.3}, pick


if __name__ == "__main__":
    main()
