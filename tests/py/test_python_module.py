#!/usr/bin/env python3
"""The kvsim Python module (tools/python/) against the kvsim CLI on the embedded trace: kvsim.run gives
exactly (==, not approximately) the numbers of `kvsim run --json`; kvsim.run_arrays on the trace's
tensors read independently with h5py gives the same numbers again; info, strategies, sweep and results
agree with `kvsim info --json`, `kvsim run --json`'s resolved parameters and the store read with sqlite3;
errors are the CLI's one-line messages as Python exceptions; the GIL is released during a replay.
Skipped when the module was not built (KVSIM_PYTHON off, e.g. the sanitizer build).
Run as: /usr/bin/python3 test_python_module.py --kvsim PATH"""
import json
import os
import sqlite3
import sys
import threading

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvsim_testlib as tl  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TRACE = os.path.join(ROOT, "traces", "samples", "stories260K.h5")
# Every protocol, a codec, a layer-coupled strategy, a merger and selectors (one needing k_pre).
EVICT = ["h2o:budget=64", "snapkv:budget=48+kivi:bits=2", "pyramidkv:budget=64", "entropy_merge:budget=64",
         "streaming:budget=32", "nf4"]
SPARSE = ["quest:budget=64", "shadowkv:budget=16,rank=8,chunk=4,outliers=2,local=1"]

a = tl.parse_args()
py_dir = os.path.join(os.path.dirname(os.path.abspath(a.kvsim)), "python")
if not os.path.isdir(os.path.join(py_dir, "kvsim")):
    tl.skip(f"the kvsim Python module is not built in {py_dir} (KVSIM_PYTHON off)")
sys.path.insert(0, py_dir)
import kvsim  # noqa: E402

suite = tl.Suite()


def cli_json(*args):
    r = tl.run([a.kvsim, "run", "--json", "--quiet", "--stats-cache", "off", "--trace", TRACE, *args])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def cli_specs(specs):
    return [x for s in specs for x in ("--strategy", s)]


def same_results(df, ref, with_curves=True):
    """Every summary statistic (and curve bin) of every configuration of a CLI JSON equals the frame's."""
    assert df.attrs["run"]["results"] is not None
    got = {(r.spec, r.metric): r for r in df.itertuples()}
    n = 0
    for c in ref["results"]:
        for metric, s in c["summary"].items():
            row = got[(c["spec"], metric)]
            for stat in ("mean", "p5", "p50", "p95", "worst"):
                want = np.nan if s[stat] is None else s[stat]
                have = getattr(row, stat)
                assert (np.isnan(want) and np.isnan(have)) or have == want, \
                    f"{c['spec']} {metric} {stat}: module {have!r}, CLI {want!r}"
                n += 1
    assert len(df) == len(got) == sum(len(c["summary"]) for c in ref["results"])
    if with_curves:
        mine = {c["spec"]: c["curves"] for c in df.attrs["run"]["results"]}
        for c in ref["results"]:
            assert mine[c["spec"]] == c["curves"], f"{c['spec']}: curves differ"
    return n


def t_run_equals_cli():
    backends = [b for b in ("ref", "omp") if b in kvsim.backends()]  # no omp in the KVSIM_OPENMP=OFF build
    assert backends[0] == "ref"
    for missing in {"ref", "omp"} - set(backends):  # what the module calls unavailable, the CLI refuses
        r = tl.run([a.kvsim, "run", "--quiet", "--trace", TRACE, "--backend", missing, "--strategy", EVICT[0]])
        assert r.returncode != 0 and "built without" in r.stderr, r.stderr
    for backend in backends:
        df = kvsim.run(TRACE, EVICT, backend=backend, stats_cache="off")
        n = same_results(df, cli_json("--backend", backend, *cli_specs(EVICT)))
        assert n == len(EVICT) * len(df.metric.unique()) * 5
    df = kvsim.run(TRACE, SPARSE, protocol="sparse", prefill="context", stride=2, stats_cache="off")
    same_results(df, cli_json("--protocol", "sparse", "--prefill", "context", "--stride", "2", *cli_specs(SPARSE)))
    assert set(df.protocol) == {"sparse"} and set(df.stride) == {2}


def t_per_head_and_positions():
    df = kvsim.run(TRACE, ["h2o:budget=64"], per_head=True, bins=4, stats_cache="off")
    ref = cli_json("--per-head", "--bins", "4", "--strategy", "h2o:budget=64")
    h = kvsim.heads(df)
    info = kvsim.info(TRACE)
    assert len(h.groupby(["layer", "head"])) == info["n_layers"] * info["n_heads"]
    for e in ref["results"][0]["heads"]:
        row = h[(h.layer == e["layer"]) & (h["head"] == e["head"]) & (h.metric == "kl")].iloc[0]
        assert row["mean"] == e["kl"]["mean"] and row["worst"] == e["kl"]["worst"]
    p = kvsim.positions(df)
    kl = p[p.metric == "kl"].sort_values("bin")
    assert list(kl.start) == ref["bin_edges"][:-1] and list(kl.end) == ref["bin_edges"][1:]
    assert [None if np.isnan(x) else x for x in kl.value] == ref["results"][0]["curves"]["kl"]
    w = kvsim.wide(df)
    assert len(w) == 1 and w["kl"].iloc[0] == ref["results"][0]["summary"]["kl"]["mean"]
    many = kvsim.run(TRACE, EVICT, stats_cache="off")
    w = kvsim.wide(many, "worst")
    assert list(w.spec) == EVICT and not w[["kl", "ratio", "out_cos"]].isna().any().any()
    ref = cli_json(*cli_specs(EVICT))
    assert list(w.kl) == [c["summary"]["kl"]["worst"] for c in ref["results"]]


def t_run_arrays_equals_trace():
    with h5py.File(TRACE, "r") as f:
        seq = next(iter(f["sequences"].values()))
        P = int(seq.attrs["prefill_len"])
        L = len(seq["layers"])
        get = lambda kind: [seq[f"layers/{l}/{kind}"].astype(np.float32)[...] for l in range(L)]  # noqa: E731
        q, k, v, k_pre = get("q"), get("k"), get("v"), get("k_pre")
        rope = f.attrs["rope_style"], float(f.attrs["rope_theta"])
    rope_style = rope[0].decode() if isinstance(rope[0], bytes) else str(rope[0])
    specs = EVICT[:3]
    df = kvsim.run_arrays(np.stack(q), np.stack(k), np.stack(v), specs, prefill=P, backend="ref")
    same_results(df, cli_json("--backend", "ref", *cli_specs(specs)))
    assert set(df.trace) == {"arrays"} and set(df.sequence) == {"arrays"}
    # a list of layers, float64 input (converted to float32 as a trace's tensors are), k_pre for shadowkv
    d64 = kvsim.run_arrays([x.astype(np.float64) for x in q], k, v, SPARSE, prefill=P, protocol="sparse",
                           k_pre=k_pre, rope_theta=rope[1], rope_style=rope_style)
    same_results(d64, cli_json("--protocol", "sparse", *cli_specs(SPARSE)))


def t_info_and_strategies():
    r = tl.run([a.kvsim, "info", "--json", TRACE])
    assert r.returncode == 0, r.stderr
    assert kvsim.info(TRACE) == json.loads(r.stdout)
    reg = kvsim.strategies()
    names = set(reg.name)
    r = tl.run([a.kvsim, "run", "--help"])
    listed = " ".join(r.stdout.split("names:")[1].split("\n  --")[0].split())
    plain, wrappers = listed.split("; wrappers: ")
    for n in (x.strip() for x in plain.split(",") + wrappers.split(",")):
        assert n in names, f"{n} listed by kvsim run --help, missing from kvsim.strategies()"
    wrap = reg[reg.kind == "wrapper"]
    assert set(wrap.name) == {x.strip() for x in wrappers.split(",")}, list(wrap.name)
    assert all("snapkv" in b and "h2o" in b for b in wrap.bases), list(wrap.bases)
    assert {"kivi", "nf4", "quant"} <= set(reg[reg.kind == "codec"].name)
    assert {"quest", "shadowkv"} <= set(reg[reg.kind == "selector"].name)
    for name in ("h2o", "snapkv", "quest", "entropy_merge", "streaming"):
        row = reg[reg.name == name].iloc[0]
        spec = name if isinstance(row.get("required"), float) else f"{name}:budget=64"
        want = cli_json("--strategy", spec, "--protocol", "sparse" if name == "quest" else "evict")
        want = {k: v for k, v in want["results"][0]["params"].items() if spec == name or k != "budget"}
        assert row.params == want, f"{name}: {row.params} vs {want}"
    assert "budget" in reg[reg.name == "h2o"].required.iloc[0]


def t_sweep_and_results():
    with tl.tempdir() as d:
        cfg = os.path.join(d, "grid.yaml")
        with open(cfg, "w") as f:
            f.write(f"name: grid\ntraces: [{os.path.abspath(TRACE)}]\nsequences: all\nprefill: [64]\nstride: 2\n"
                    "strategies:\n  - name: h2o\n    grid: {budget: [32, 64]}\n"
                    "  - name: full\n    codecs: [{name: kivi, grid: {bits: [2]}}]\n")
        db = os.path.join(d, "grid.db")
        assert kvsim.sweep(cfg, db, stats_cache="off") == 0
        res = kvsim.results(db)
        with sqlite3.connect(db) as con:
            n = con.execute("SELECT count(*) FROM results").fetchone()[0]
        assert len(res) == n > 0
        assert len(set(res.spec)) == 3
        first = res.sequence.iloc[0]
        df = kvsim.run(TRACE, ["h2o:budget=32", "h2o:budget=64", "kivi:bits=2"], prefill=64, stride=2,
                       sequence=first, stats_cache="off")
        key = lambda s, p: (s, json.loads(p).get("budget"))  # noqa: E731  (the store keeps codec params as given)
        df["key"] = [key(s, p) for s, p in zip(df.strategy, df.params_json)]
        checked = 0
        for r in res[res.sequence == first].itertuples():
            m = df[(df.key == key(r.strategy, r.params_json)) & (df.metric == r.metric)]
            if len(m):
                assert m["mean"].iloc[0] == r.mean or (np.isnan(r.mean) and np.isnan(m["mean"].iloc[0])), r
                checked += 1
        assert checked == len(df), (checked, len(df), sorted(set(res.strategy)), sorted(set(df.strategy)))
        assert kvsim.sweep(cfg, db, stats_cache="off") == 0  # resumed: nothing to do
        assert len(kvsim.results(db)) == n
        os.chmod(db, 0o444)
        assert len(kvsim.results(db)) == n  # read-only store: still readable


def raises(exc, fn, needle):
    try:
        fn()
    except exc as e:
        msg = str(e)
        assert "\n" not in msg and needle in msg, f"message {msg!r} lacks {needle!r}"
        return msg
    raise AssertionError(f"no {exc.__name__}")


def t_errors():
    msg = raises(kvsim.UsageError, lambda: kvsim.run(TRACE, ["nosuch:budget=3"]), "unknown strategy 'nosuch'")
    r = tl.run([a.kvsim, "run", "--trace", TRACE, "--strategy", "nosuch:budget=3"])
    assert r.returncode == 2 and msg in r.stderr, (msg, r.stderr)
    assert issubclass(kvsim.UsageError, ValueError) and issubclass(kvsim.IoError, OSError)
    assert all(issubclass(c, kvsim.Error) for c in (kvsim.UsageError, kvsim.FormatError, kvsim.IoError))
    raises(kvsim.UsageError, lambda: kvsim.run(TRACE, ["h2o:budget=64"], stride=0), "stride")
    raises(kvsim.Error, lambda: kvsim.run("/nonexistent.h5", ["h2o:budget=64"]), "/nonexistent.h5")
    q = np.zeros((2, 8, 4), np.float32)
    raises(kvsim.FormatError, lambda: kvsim.run_arrays(q, q[:1], q[:1, :7], ["h2o:budget=4"], prefill=4), "v of layer 0")
    raises(kvsim.UsageError, lambda: kvsim.run_arrays(q, q[:1], q[:1], ["h2o:budget=4"], prefill=9), "prefill P = 9")
    raises(kvsim.UsageError, lambda: kvsim.run_arrays(q.astype(int), q[:1], q[:1], ["h2o"], prefill=4), "dtype")
    raises(kvsim.UsageError, lambda: kvsim.run_arrays(q, q[:1], q[:1], ["h2o"], prefill="trace"), "prefill")
    raises(kvsim.FormatError, lambda: kvsim.run_arrays(np.zeros((3, 8, 4), np.float32), q[:1] * 0 + np.zeros(
        (2, 8, 4), np.float32), np.zeros((2, 8, 4), np.float32), ["h2o:budget=4"], prefill=4), "Hkv must divide H")
    nan = np.zeros((2, 8, 4), np.float32)
    nan[1, 5, 2] = np.nan
    raises(kvsim.FormatError, lambda: kvsim.run_arrays(q, nan[:1], nan[1:], ["h2o:budget=4"], prefill=4),
           "v of layer 0: value nan at [head 0, token 5, dim 2]")
    big = np.full((1, 8, 4), 70000.0, np.float32)
    raises(kvsim.FormatError, lambda: kvsim.run_arrays(q, big, q[:1], ["h2o:budget=4"], prefill=4), "|x| <= 65504")
    raises(kvsim.UsageError, lambda: kvsim.run(TRACE, ["h2o:budget=64"], max_memory="1K"), "max-memory")
    with tl.tempdir() as d:
        bad = os.path.join(d, "x.db")
        with open(bad, "w") as f:
            f.write("not sqlite")
        raises(kvsim.FormatError, lambda: kvsim.results(bad), "not a kvsim results store")


def t_progress_and_gil():
    calls = []
    kvsim.run(TRACE, ["h2o:budget=64"], progress=lambda done, total: calls.append((done, total)), stats_cache="off")
    L = kvsim.info(TRACE)["n_layers"]
    assert calls == [(i, L) for i in range(1, L + 1)], calls
    # With the GIL released, this thread keeps running Python while the replay runs in another one.
    done, ticks = threading.Event(), [0]
    specs = [f"h2o:budget={b}" for b in range(16, 200, 8)] + ["kivi:bits=2", "entropy_merge:budget=64"]
    th = threading.Thread(target=lambda: (kvsim.run(TRACE, specs, backend="ref", stats_cache="off"), done.set()))
    th.start()
    while not done.is_set() and th.is_alive():
        ticks[0] += 1
    th.join()
    assert done.is_set()
    assert ticks[0] > 10000, f"only {ticks[0]} iterations of the main thread during the replay: GIL held?"


def t_example_notebook():
    with tl.tempdir() as d:
        env = dict(os.environ, PYTHONPATH=py_dir, MPLBACKEND="Agg")
        r = tl.run([sys.executable, os.path.join(ROOT, "plots", "example_notebook.py"), "--out", d], env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "h2o:budget=128+kivi:bits=4" in r.stdout
        with open(os.path.join(d, "pareto.png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


suite.check("kvsim.run equals kvsim run --json exactly (ref, omp; evict and sparse)", t_run_equals_cli)
suite.check("per-head and per-position frames equal the CLI's", t_per_head_and_positions)
suite.check("kvsim.run_arrays on h5py-read tensors equals the trace's replay", t_run_arrays_equals_trace)
suite.check("info and the strategy registry equal the CLI's", t_info_and_strategies)
suite.check("sweep into a store, results() reads it (also read-only)", t_sweep_and_results)
suite.check("errors: the CLI's one-line messages as Python exceptions", t_errors)
suite.check("progress callback once per layer; the GIL is released during a replay", t_progress_and_gil)
suite.check("plots/example_notebook.py runs its grid and draws the Pareto front", t_example_notebook)
suite.finish()
