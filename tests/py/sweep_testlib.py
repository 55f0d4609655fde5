"""Helpers for the sweep tests: a private copy of the embedded trace, configs/quick.yaml pointed at
it, and a row-by-row dump of a results store (values compared exactly)."""
import os
import re
import shutil
import sqlite3
import subprocess

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TRACE = os.path.join(ROOT, "traces", "samples", "stories260K.h5")
QUICK = os.path.join(ROOT, "configs", "quick.yaml")


def quick_config(d, traces=None, name="quick.yaml", extra="", sequences=None):
    """configs/quick.yaml with its traces replaced by a copy of the embedded trace in d (its
    reference-statistics sidecar then lives in d too). Returns the config path."""
    if traces is None:
        copy = os.path.join(d, "stories260K.h5")
        if not os.path.exists(copy):
            shutil.copyfile(TRACE, copy)
        traces = [copy]
    text = open(QUICK).read()
    text, n = re.subn(r"(?m)^traces:.*$", "traces: [" + ", ".join(traces) + "]", text)
    assert n == 1, "configs/quick.yaml has no traces line"
    if sequences is not None:
        text, n = re.subn(r"(?m)^sequences:.*$", "sequences: [" + ", ".join(sequences) + "]", text)
        assert n == 1, "configs/quick.yaml has no sequences line"
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text + extra)
    return path


def sweep(kvsim, cfg, db, *args, check=True, env=None):
    r = subprocess.run([kvsim, "sweep", cfg, "--db", db, "--quiet", *args], capture_output=True, text=True,
                       env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"kvsim sweep exit {r.returncode}: {r.stderr}")
    return r


def dump(db):
    """Every result row keyed by what identifies it (no ids, hosts or timings)."""
    con = sqlite3.connect(db)
    try:
        runs = con.execute(
            "SELECT c.spec, c.strategy, c.params_json, t.content_hash, r.sequence, r.prefill, r.stride, "
            "r.n_tokens, r.status, r.error, r.backend FROM runs r JOIN configs c ON c.id = r.config_id "
            "JOIN traces t ON t.id = r.trace_id ORDER BY 1, 4, 5, 6, 7").fetchall()
        summaries = con.execute(
            "SELECT c.spec, t.content_hash, r.sequence, r.prefill, r.stride, s.layer, s.head, s.metric, "
            "s.mean, s.p5, s.p50, s.p95, s.worst, s.n FROM summaries s JOIN runs r ON r.id = s.run_id "
            "JOIN configs c ON c.id = r.config_id JOIN traces t ON t.id = r.trace_id "
            "ORDER BY 1, 2, 3, 4, 5, 6, 7, 8").fetchall()
        curves = con.execute(
            "SELECT c.spec, t.content_hash, r.sequence, r.prefill, r.stride, v.metric, v.bin, v.pos_lo, "
            "v.pos_hi, v.value FROM curves v JOIN runs r ON r.id = v.run_id "
            "JOIN configs c ON c.id = r.config_id JOIN traces t ON t.id = r.trace_id "
            "ORDER BY 1, 2, 3, 4, 5, 6, 7").fetchall()
    finally:
        con.close()
    return {"runs": runs, "summaries": summaries, "curves": curves}


def assert_same(a, b, what):
    for table in ("runs", "summaries", "curves"):
        x, y = a[table], b[table]
        assert len(x) == len(y), f"{what}: {table} has {len(x)} rows, expected {len(y)}"
        for i, (rx, ry) in enumerate(zip(x, y)):
            assert rx == ry, f"{what}: {table} row {i} differs:\n  got      {rx}\n  expected {ry}"


def count(db, sql):
    """A scalar from the store; 0 when the store (or its schema) does not exist yet."""
    if not os.path.exists(db):
        return 0
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchone()[0]
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return 0
        raise
    finally:
        con.close()
