"""kvsim from Python: replay traces (or tensors in memory) through KV-cache strategies, run sweeps,
read the results store.

    import kvsim
    df = kvsim.run("traces/samples/stories260K.h5", ["h2o:budget=64", "kivi:bits=2"])
    kvsim.wide(df)                      # one row per configuration, one column per metric (means)

Every number is the one `kvsim run --json` prints for the same arguments: the module runs the same
C++ replay (kvsim._core) and returns its JSON, unrounded. Frames are in the long format of the
results store's `results` view (sim/store/STORE.md): one row per (configuration, metric) with the
statistics mean, p5, p50, p95 and worst over the per-head means. Errors raise kvsim.UsageError /
kvsim.FormatError (ValueError), kvsim.IoError (OSError) or kvsim.Error (RuntimeError) with the CLI's
one-line message. The GIL is released while a replay runs.
"""

import json
import os
import sqlite3
import sys
import urllib.parse

import numpy as np

from . import _core
from ._core import Error, FormatError, IoError, NotCompiled, UsageError

__version__ = _core.__version__
__all__ = ["info", "run", "run_arrays", "sweep", "results", "strategies", "backends", "wide", "heads", "positions", "Error",
           "UsageError", "FormatError", "IoError", "NotCompiled"]

_STATS = ["mean", "p5", "p50", "p95", "worst"]


def info(path):
    """The trace's header and sequences, as `kvsim info --json` prints them (a dict)."""
    return json.loads(_core.info_json(os.fspath(path)))


def _progress(progress):
    """None: silent; a callable (done, total); True: tqdm when importable, else a line on stderr per layer."""
    if progress is None or progress is False:
        return None
    if callable(progress):
        return progress
    try:
        from tqdm import tqdm
    except ImportError:
        return lambda done, total: print(f"kvsim: layer {done}/{total}", file=sys.stderr)
    bar = {}

    def step(done, total):
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, unit="layer", desc="kvsim")
        bar["bar"].update(1)
        if done == total:
            bar["bar"].close()

    return step


def _specs(strategies):
    if isinstance(strategies, str):
        return [strategies]
    specs = list(strategies)
    if not all(isinstance(s, str) for s in specs):
        raise UsageError(f"strategies: a spec string or a list of spec strings, not {strategies!r}")
    return specs


def _frame(result):
    """The long summary frame of one replay's JSON; the JSON itself in df.attrs['run']."""
    import pandas as pd

    rows = []
    for c in result["results"]:
        for metric, s in c["summary"].items():
            rows.append({"strategy": c["strategy"], "spec": c["spec"], "params_json": json.dumps(c["params"]),
                         "trace": result["trace"], "sequence": result["sequence"], "prefill": result["prefill"],
                         "stride": result["stride"], "protocol": result["protocol"], "metric": metric,
                         **{k: (np.nan if s[k] is None else s[k]) for k in _STATS}})
    df = pd.DataFrame(rows)
    df.attrs["run"] = result
    return df


def run(trace, strategies, prefill="trace", stride=1, protocol="evict", backend="auto", sequence=None, bins=16,
        eps=1e-6, stats_cache="", per_head=False, max_memory="8G", progress=None):
    """Replays one sequence of a trace through each strategy spec (as `kvsim run`): a long DataFrame of
    summaries (see the module doc); `kvsim.heads(df)` (with per_head=True) and `kvsim.positions(df)`
    give the per-(layer, head) and per-position frames. prefill: an int, "trace" or "context"."""
    r = _core.run_json(os.fspath(trace), _specs(strategies), str(prefill), int(stride), protocol, backend,
                       sequence or "", int(bins), float(eps), stats_cache, bool(per_head), str(max_memory),
                       _progress(progress))
    return _frame(json.loads(r))


def _layers(x, what):
    """A list of float32 C-order [heads, T, D] arrays from an [L, heads, T, D] or [heads, T, D] array or a list."""
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        layers = list(x)
    else:
        a = np.asarray(x)
        if a.ndim == 3:
            layers = [a]
        elif a.ndim == 4:
            layers = list(a)
        else:
            raise UsageError(f"run_arrays: {what} has shape {list(a.shape)}: give [L, heads, T, D], [heads, T, D] "
                             f"or a list of [heads, T, D] layers")
    out = []
    for i, layer in enumerate(layers):
        a = np.asarray(layer)
        if not (np.issubdtype(a.dtype, np.floating)):
            raise UsageError(f"run_arrays: {what} of layer {i} has dtype {a.dtype}, not a floating-point type")
        out.append(np.ascontiguousarray(a, dtype=np.float32))
    return out


def run_arrays(q, k, v, strategies, prefill, stride=1, protocol="evict", backend="auto", k_pre=None, bins=16,
               eps=1e-6, rope_theta=10000.0, rope_style="none", name="arrays", per_head=False, max_memory="8G",
               progress=None):
    """Replays tensors already in memory, without a file: q [L, H, T, D] (after RoPE), k and v
    [L, Hkv, T, D] (or one layer [heads, T, D], or lists of layers), optionally k_pre (pre-RoPE keys,
    for ShadowKV, with rope_theta and rope_style 'half' or 'interleaved'). Converted to float32 as a
    trace's tensors are when read, and held to a trace's rule: finite, |x| <= 65504 (NumericError, a
    FormatError, otherwise). The same frame as run(); no sidecar cache is used."""
    if isinstance(prefill, bool) or not isinstance(prefill, (int, np.integer)):
        raise UsageError(f"run_arrays: prefill {prefill!r} must be an integer P (0 <= P < T)")
    r = _core.run_arrays_json(_layers(q, "q"), _layers(k, "k"), _layers(v, "v"), _layers(k_pre, "k_pre"),
                              _specs(strategies), int(prefill), int(stride), protocol, backend, int(bins), float(eps),
                              bool(per_head), float(rope_theta), rope_style, name, str(max_memory),
                              _progress(progress))
    return _frame(json.loads(r))


def wide(df, stat="mean"):
    """One row per configuration (strategy, spec, protocol, trace, sequence, prefill), one column per metric."""
    order = list(dict.fromkeys(df.spec))
    keys = [c for c in ["strategy", "spec", "protocol", "trace", "sequence", "prefill", "stride"] if c in df]
    out = df.pivot(index=keys, columns="metric", values=stat)
    out.columns.name = None
    out = out.reset_index()
    return out.iloc[sorted(range(len(out)), key=lambda i: order.index(out.spec.iloc[i]))].reset_index(drop=True)


def heads(df):
    """Per-(layer, query head) summaries of a run(..., per_head=True) frame: one row per (spec, layer, head, metric)."""
    import pandas as pd

    result = df.attrs.get("run")
    if result is None or not result["results"] or "heads" not in result["results"][0]:
        raise UsageError("heads(): give the frame of run(..., per_head=True)")
    rows = []
    for c in result["results"]:
        for h in c["heads"]:
            for metric, s in h.items():
                if metric in ("layer", "head"):
                    continue
                rows.append({"spec": c["spec"], "layer": h["layer"], "head": h["head"], "metric": metric,
                             **{k: (np.nan if s[k] is None else s[k]) for k in _STATS}})
    return pd.DataFrame(rows)


def positions(df):
    """Per-position curves of a run() frame: one row per (spec, metric, bin) with the bin's positions
    [start, end) and the mean over heads of the bin's per-step values (NaN: no step in the bin)."""
    import pandas as pd

    result = df.attrs.get("run")
    if result is None:
        raise UsageError("positions(): give a frame returned by run() or run_arrays()")
    edges = result["bin_edges"]
    rows = []
    for c in result["results"]:
        for metric, curve in c["curves"].items():
            for b, x in enumerate(curve):
                rows.append({"spec": c["spec"], "metric": metric, "bin": b, "start": edges[b], "end": edges[b + 1],
                             "value": np.nan if x is None else x})
    return pd.DataFrame(rows)


def sweep(config, db=None, backend="", batch=32, shard="", stats_cache="", quiet=True):
    """Runs a sweep config into a results store (as `kvsim sweep`; resumable). Returns the exit status:
    0, or 1 when some run failed (its error is in the store)."""
    return _core.sweep(os.fspath(config), os.fspath(db) if db else "", backend, int(batch), shard, stats_cache,
                       bool(quiet))


def results(db):
    """The store's `results` view (sim/store/STORE.md) as a DataFrame; the store is opened read-only."""
    import pandas as pd

    path = os.fspath(db)
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such results store")
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        with sqlite3.connect(uri, uri=True) as con:
            return pd.read_sql_query("SELECT * FROM results", con)
    except (sqlite3.DatabaseError, pd.errors.DatabaseError) as e:
        raise FormatError(f"{path}: not a kvsim results store ({e})") from None


def strategies():
    """The registry: one row per strategy, selector and codec with its default parameters."""
    import pandas as pd

    return pd.DataFrame(json.loads(_core.strategies_json()))


def backends():
    """The compute backends this build can run here (`ref` always; `omp` when built with OpenMP;
    `cuda` when built with CUDA and a device is present), as `--backend` spells them."""
    return list(_core.backends())
