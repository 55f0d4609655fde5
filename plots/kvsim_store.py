"""Reading the kvsim results store (sim/store/STORE.md, schema version 1) for plots.

Only sqlite3 is imported at module level so that bad input is refused before pandas and matplotlib
load. Every user-facing problem raises PlotError with a one-line message.
"""
import json
import os
import sqlite3
import urllib.parse

SCHEMA_VERSION = "3"

# design.md §4 names as stored (topk_recall is stored per k).
METRICS = ["out_cos", "out_rel_l2", "mass", "kl", "tv", "topk8_recall", "topk32_recall", "logit_rel_err",
           "k_rel_err", "v_rel_err", "bytes", "ratio"]
HIGHER_IS_BETTER = {"out_cos", "mass", "topk8_recall", "topk32_recall"}
# Metrics that make sense on a y axis against memory (ratio and bytes are memory themselves).
QUALITY_METRICS = [m for m in METRICS if m not in ("bytes", "ratio")]
STATS = ["mean", "p5", "p50", "p95", "worst"]

LABELS = {
    "out_cos": "output cosine similarity",
    "out_rel_l2": "output relative L2 error",
    "mass": "retained attention mass",
    "kl": "KL(full ‖ compressed) [nats]",
    "tv": "total variation distance",
    "topk8_recall": "top-8 recall",
    "topk32_recall": "top-32 recall",
    "logit_rel_err": "logit relative error",
    "k_rel_err": "key reconstruction rel. error",
    "v_rel_err": "value reconstruction rel. error",
    "bytes": "KV bytes per (layer, KV head)",
    "ratio": "KV memory / fp16 full cache",
}


class PlotError(Exception):
    """Bad input: printed as one line, exit status 2."""


def metric_label(metric, stat="mean"):
    lab = LABELS.get(metric, metric)
    return lab if stat == "mean" else f"{lab} ({stat})"


def better(metric):
    """+1 when higher is better, -1 when lower is better."""
    return 1 if metric in HIGHER_IS_BETTER else -1


def check_metric(metric, allowed=QUALITY_METRICS):
    if metric not in allowed:
        raise PlotError(f"unknown metric '{metric}' (choose {', '.join(allowed)})")


class Store:
    """A read-only connection plus the selection (model, strategies, sequences) the plot asked for."""

    def __init__(self, path, model=None, strategies=None, sequences=None, protocols=None):
        self.path = path
        if not os.path.exists(path):
            raise PlotError(f"{path}: no such results store")
        if not os.path.isfile(path):
            raise PlotError(f"{path}: not a file")
        uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
        try:
            try:
                self.con = sqlite3.connect(uri, uri=True)
                meta = dict(self.con.execute("SELECT key, value FROM meta").fetchall())
            except sqlite3.OperationalError:
                # A WAL store in a folder where no -shm can be created (read-only): with no -wal file
                # everything is in the main file and no writer is active, so read it as immutable
                # (sim/store/STORE.md).
                if os.path.exists(path + "-wal"):
                    raise
                self.con = sqlite3.connect(uri + "&immutable=1", uri=True)
                meta = dict(self.con.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            raise PlotError(f"{path}: not a kvsim results store ({e})") from None
        if meta.get("schema") != "kvsim-results":
            raise PlotError(f"{path}: not a kvsim results store (meta.schema = {meta.get('schema')!r})")
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise PlotError(f"{path}: results store schema version {meta.get('schema_version')}, "
                            f"this kvsim reads version {SCHEMA_VERSION}")
        self._select(model, strategies, sequences, protocols)

    def _select(self, model, strategies, sequences, protocols=None):
        q = """SELECT r.id, r.config_id, c.strategy, c.spec, c.params_json, r.trace_id, t.path, t.model,
                      t.synthetic, r.sequence, r.prefill, r.n_tokens, r.protocol,
                      t.n_layers, t.n_heads, t.n_kv_heads, t.head_dim
               FROM runs r JOIN configs c ON c.id = r.config_id JOIN traces t ON t.id = r.trace_id
               WHERE r.status = 'done'"""
        rows = self.con.execute(q).fetchall()
        if not rows:
            n_all = self.con.execute("SELECT count(*) FROM runs").fetchone()[0]
            raise PlotError(f"{self.path}: no finished runs ({n_all} runs in all; run a sweep first)")
        cols = ["run_id", "config_id", "strategy", "spec", "params_json", "trace_id", "trace", "model", "synthetic",
                "sequence", "prefill", "n_tokens", "protocol", "L", "H", "Hkv", "D"]
        runs = [dict(zip(cols, r)) for r in rows]
        if model:
            runs = [r for r in runs if model in (r["model"] or "") or model in (r["trace"] or "")]
            if not runs:
                raise PlotError(f"{self.path}: no finished runs on a model or trace matching '{model}'")
        models = sorted({r["model"] for r in runs})
        if len(models) > 1:
            raise PlotError(f"{self.path}: runs on {len(models)} models ({', '.join(models)}): choose one with --model")
        if strategies:
            have = sorted({r["strategy"] for r in runs})
            for s in strategies:
                if s not in have:
                    raise PlotError(f"{self.path}: no finished runs of strategy '{s}' (have {', '.join(have)})")
            runs = [r for r in runs if r["strategy"] in strategies]
        if sequences:
            runs = [r for r in runs if r["sequence"] in sequences]
            if not runs:
                raise PlotError(f"{self.path}: no finished runs of sequence {', '.join(sequences)}")
        if protocols:
            have = sorted({r["protocol"] for r in runs})
            for p in protocols:
                if p not in have:
                    raise PlotError(f"{self.path}: no finished runs under protocol '{p}' (have {', '.join(have)})")
            runs = [r for r in runs if r["protocol"] in protocols]
        # One line per (strategy, protocol): with runs under several protocols a strategy's label names
        # its protocol, 'h2o (prefill)', unless it is the default evict; selectors run under sparse only.
        several = len({r["protocol"] for r in runs}) > 1
        for r in runs:
            r["label"] = protocol_label(r["strategy"], r["protocol"]) if several else r["strategy"]
        self.runs = runs
        self.model = models[0]
        self.synthetic = all(r["synthetic"] for r in runs)
        self.shape = {k: runs[0][k] for k in ("L", "H", "Hkv", "D")}
        self.run_ids = [r["run_id"] for r in runs]
        self.metrics = sorted({m for (m,) in self.con.execute(
            "SELECT DISTINCT metric FROM summaries WHERE layer = -1")})

    def require_metric(self, metric, allowed=QUALITY_METRICS):
        check_metric(metric, allowed)
        if metric not in self.metrics:
            raise PlotError(f"{self.path}: no '{metric}' results in the store "
                            f"(have {', '.join(m for m in METRICS if m in self.metrics)})")
        if "ratio" not in self.metrics:
            raise PlotError(f"{self.path}: no 'ratio' results in the store (every run reports it)")

    def configs(self, metric, stat="mean"):
        """DataFrame, one row per (configuration, protocol): strategy (the label: 'h2o (prefill)' when the
        selection mixes protocols), spec, params, ratio (mean), value (stat of metric), n_runs. Values are
        means over the selected runs (sequences, traces); 'worst' takes the worst run. Under protocol sparse
        the cache holds everything, so `ratio` is the selector's read_ratio (bytes read per step)."""
        import pandas as pd

        # no IN list of run ids: a big sweep's list would pass SQLite's statement length limit
        df = pd.read_sql_query(
            "SELECT run_id, metric, mean, p5, p50, p95, worst FROM summaries "
            "WHERE layer = -1 AND metric IN ('ratio', 'read_ratio', ?)", self.con, params=(metric,))
        df = df[df.run_id.isin(set(self.run_ids))]
        runs = pd.DataFrame(self.runs)[["run_id", "config_id", "label", "spec", "params_json", "protocol"]]
        runs = runs.rename(columns={"label": "strategy"})
        sparse = set(runs.run_id[runs.protocol == "sparse"])
        read = df.metric == "read_ratio"
        use = (df.metric == "ratio") & ~df.run_id.isin(sparse) | read & df.run_id.isin(sparse)
        ratio = df[use][["run_id", "mean"]].rename(columns={"mean": "ratio"})
        val = df[df.metric == metric][["run_id", stat]].rename(columns={stat: "value"})
        m = runs.merge(ratio, on="run_id").merge(val, on="run_id")
        agg = {"ratio": "mean", "run_id": "count"}
        if stat == "worst":
            agg["value"] = "max" if better(metric) < 0 else "min"
        else:
            agg["value"] = "mean"
        out = m.groupby(["config_id", "strategy", "spec", "params_json", "protocol"], as_index=False).agg(agg)
        out = out.rename(columns={"run_id": "n_runs"})
        out["params"] = out.params_json.map(_params)
        return out.sort_values(["strategy", "ratio"]).reset_index(drop=True)

    def run_ids_of(self, config_id, protocol=None):
        return [r["run_id"] for r in self.runs
                if r["config_id"] == config_id and (protocol is None or r["protocol"] == protocol)]

    def prefill_of(self, config_id):
        p = sorted({r["prefill"] for r in self.runs if r["config_id"] == config_id})
        return p[0] if len(p) == 1 else None

    def heads(self, config_id, metric, stat="mean", protocol=None):
        """DataFrame layer, head, value: the configuration's per-(layer, query head) stat, mean over its runs
        (under `protocol` only, when given)."""
        import pandas as pd

        ids = ",".join(str(i) for i in self.run_ids_of(config_id, protocol))
        df = pd.read_sql_query(
            f"SELECT layer, head, {stat} AS value FROM summaries "
            f"WHERE layer >= 0 AND head >= 0 AND metric = ? AND run_id IN ({ids})", self.con, params=(metric,))
        if df.empty:
            spec = next(r["spec"] for r in self.runs if r["config_id"] == config_id)
            raise PlotError(f"{self.path}: no per-(layer, head) '{metric}' rows for {spec}")
        df["value"] = df.value.astype(float)
        return df.groupby(["layer", "head"], as_index=False).value.mean()

    def curve(self, config_id, metric, protocol=None):
        """DataFrame bin, pos (bin centre), pos_lo, pos_hi, value: the configuration's curve, mean over its runs
        (under `protocol` only, when given)."""
        import pandas as pd

        ids = ",".join(str(i) for i in self.run_ids_of(config_id, protocol))
        df = pd.read_sql_query(
            f"SELECT bin, pos_lo, pos_hi, value FROM curves WHERE metric = ? AND run_id IN ({ids})",
            self.con, params=(metric,))
        df["pos"] = 0.5 * (df.pos_lo + df.pos_hi - 1)
        return df.groupby("bin", as_index=False).agg({"pos": "mean", "pos_lo": "min", "pos_hi": "max",
                                                       "value": "mean"})

    def has_curves(self, metric):
        ids = {i for (i,) in self.con.execute("SELECT DISTINCT run_id FROM curves WHERE metric = ?", (metric,))}
        return not ids.isdisjoint(self.run_ids)

    def describe(self):
        n_seq = len({(r["trace_id"], r["sequence"]) for r in self.runs})
        from kvsim_style import short_model

        return f"{short_model(self.model or '?')}, {n_seq} sequence{'s' if n_seq != 1 else ''}"


def protocol_label(strategy, protocol):
    """'h2o', 'evict' -> 'h2o'; 'h2o', 'prefill' -> 'h2o (prefill)' (kvsim_style strips the suffix for colours)."""
    return strategy if protocol in (None, "evict") else f"{strategy} ({protocol})"


def _params(js):
    try:
        return json.loads(js) if js else {}
    except ValueError:
        return {}


def best_under(df, target, metric, tol=0.05):
    """Per strategy, the configuration with the best value among those with ratio <= target * (1 + tol)
    (a budget stated as a ratio costs slightly more than the ratio: indices, scales, the new token)."""
    sel = df[df.ratio <= target * (1 + tol)]
    if sel.empty:
        return sel
    sign = better(metric)
    idx = sel.groupby("strategy").value.idxmax() if sign > 0 else sel.groupby("strategy").value.idxmin()
    return sel.loc[idx.values]


def pareto_front(points, metric):
    """Indices of the non-dominated rows of a DataFrame with columns ratio, value (less memory, better value)."""
    sign = better(metric)
    order = points.sort_values(["ratio", "value"], ascending=[True, sign < 0]).index
    front, best = [], None
    for i in order:
        v = points.at[i, "value"] * sign
        if best is None or v > best + 1e-15:
            front.append(i)
            best = v
    return front
