#!/usr/bin/python3
"""Writes a SYNTHETIC results store that follows sim/store/STORE.md (schema version 1) exactly: for tests of the
plots and for trying them before a sweep has run. The numbers come from a made-up model of how eviction,
merging and quantization trade memory for error (plausible shapes, not measurements); the trace row is
marked synthetic = 1, so every figure made from it says "synthetic data".

    /usr/bin/python3 plots/synth_store.py --out results.db [--shape stories260k] [--tokens 512]
        [--sequences 2] [--seed 1] [--empty]
"""
import argparse
import json
import math
import os
import random
import sqlite3
import sys

from kvsim_store import SCHEMA_VERSION

# The store's one schema, which kvsim embeds at build time (sim/store/STORE.md).
SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sim", "store", "schema.sql")


def schema():
    with open(SCHEMA_FILE) as f:
        return f.read()


SHAPES = {"tiny": (2, 4, 2, 16), "stories260k": (5, 8, 4, 8), "llama3-8b": (32, 32, 8, 128)}
BUDGETS = [0.0625, 0.125, 0.25, 0.5]
# How well an eviction or merging rule keeps attention mass at a given budget (higher is better).
SKILL = {"window": 0.5, "streaming": 1.0, "h2o": 1.6, "tova": 1.7, "scissorhands": 1.3, "snapkv": 1.8,
         "entropy_merge": 1.9, "cms_topk": 1.4}
CODEC = {  # name: list of (params, ratio, key/value reconstruction error)
    "quant": [({"bits": "8", "axis": "token", "group": "32"}, 9 / 16, 0.006),
              ({"bits": "4", "axis": "token", "group": "32"}, 5 / 16, 0.09),
              ({"bits": "2", "axis": "token", "group": "32"}, 3 / 16, 0.42)],
    "kivi": [({"bits": "4", "group": "32", "residual": "32"}, 5.4 / 16, 0.06),
             ({"bits": "2", "group": "32", "residual": "32"}, 3.4 / 16, 0.21)],
    "nf4": [({"block": "64", "dq": "1"}, 4.127 / 16, 0.075), ({"block": "64", "dq": "0"}, 4.5 / 16, 0.074)],
}
COMPOSITIONS = [("h2o", "kivi"), ("snapkv", "nf4"), ("streaming", "quant")]
LOWER = ["out_rel_l2", "kl", "tv", "logit_rel_err", "k_rel_err", "v_rel_err"]
HIGHER = ["out_cos", "mass", "topk8_recall", "topk32_recall"]


def fnv1a(text):
    """64-bit FNV-1a as 16 hex digits, like sim/store/store.cpp's content_hash_hex."""
    h = 0xcbf29ce484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def configs():
    """(strategy, params, ratio, missing mass, reconstruction error) for every configuration."""
    out = [("full", {}, 1.0, 0.0, 0.0)]
    for s, skill in SKILL.items():
        for r in BUDGETS:
            p = {"ratio": str(r), "sinks": "4" if s != "window" else "0", "recent": "8", "gqa": "mean"}
            out.append((s, p, r + 1.5 / 512, _missing(r, skill), 0.0))
    for c, variants in CODEC.items():
        for p, ratio, err in variants:
            out.append((c, dict(p), ratio, 0.0, err))
    for s, c in COMPOSITIONS:
        for r in BUDGETS[1:]:
            for cp, cratio, err in CODEC[c]:
                if cratio > 0.5:
                    continue
                p = {"ratio": str(r), "sinks": "4", "recent": "8", **{f"{c}.{k}": v for k, v in cp.items()}}
                out.append((f"{s}+{c}", p, r * cratio + 1.0 / 512, _missing(r, SKILL[s]), err))
    return out


def _missing(r, skill):
    return 0.55 * math.exp(-4.0 * skill * r) * (1.0 - r)


def head_values(miss, err, layer_f, head_f):
    """Mean of every metric for one (layer, head) from its missing mass and reconstruction error."""
    m = min(0.98, miss * layer_f * head_f)
    e = err * head_f ** 0.5
    out_err = math.sqrt((0.9 * m ** 0.8) ** 2 + (0.8 * e) ** 2)
    return {
        "mass": 1.0 - m,
        "kl": -math.log(1.0 - m) + 0.5 * e * e,
        "tv": m + 0.3 * e,
        "out_rel_l2": out_err,
        "out_cos": 1.0 - 0.5 * out_err ** 2,
        "topk8_recall": 1.0 - 0.7 * m ** 0.7,
        "topk32_recall": 1.0 - 0.8 * m ** 0.6,
        "logit_rel_err": 0.9 * e,
        "k_rel_err": e + 0.8 * m ** 0.5 * (1 if m > 0 else 0),
        "v_rel_err": 1.1 * e + 0.8 * m ** 0.5 * (1 if m > 0 else 0),
    }


def stats(metric, mean):
    """(mean, p5, p50, p95, worst) around a mean, with the tail on the bad side of the metric."""
    if metric in HIGHER:
        d = 1.0 - mean
        return (mean, 1 - min(1, 2.4 * d), 1 - 0.8 * d, 1 - 0.25 * d, 1 - min(1, 4.0 * d))
    return (mean, 0.25 * mean, 0.8 * mean, 2.4 * mean, 4.0 * mean)


def build(path, shape="stories260k", tokens=512, sequences=2, seed=1, empty=False):
    if os.path.exists(path):
        os.remove(path)
    L, H, Hkv, D = SHAPES[shape]
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(schema())
    con.executemany("INSERT INTO meta VALUES(?, ?)", [("schema", "kvsim-results"), ("schema_version", SCHEMA_VERSION),
                                                      ("created", "2026-01-01T00:00:00Z")])
    con.execute("INSERT INTO traces VALUES(1, ?, ?, ?, 1, ?, ?, ?, ?)",
                (f"out/synthetic-{shape}.h5", f"{seed:016x}", f"synthetic:{shape}", L, H, Hkv, D))
    if empty:
        con.commit()
        con.close()
        return
    rng = random.Random(seed)
    layer_f = [1.6 if l == 0 else 0.7 + 0.6 * l / max(1, L - 1) for l in range(L)]
    head_f = [[math.exp(rng.gauss(0, 0.35)) for _ in range(H)] for _ in range(L)]
    P = tokens // 2
    n_bins = 8
    edges = [P + (tokens - P) * b // n_bins for b in range(n_bins + 1)]
    run_id = 0
    for cid, (strategy, params, ratio, miss, err) in enumerate(configs(), start=1):
        spec = strategy + (":" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) if params else "")
        con.execute("INSERT INTO configs VALUES(?, ?, ?, ?, ?)",
                    (cid, strategy, spec, json.dumps(params, sort_keys=True), fnv1a(spec)))
        for si in range(sequences):
            run_id += 1
            seq = f"{si:04d}"
            failed = strategy == "cms_topk" and si == 1 and ratio < 0.1
            con.execute("INSERT INTO runs VALUES(?, ?, 1, ?, ?, 1, ?, ?, ?, ?, 'synth', '0.1.0', 'ref', ?, 'evict', '')",
                        (run_id, cid, seq, P, tokens, "failed" if failed else "done",
                         "synthetic failure for tests" if failed else None, 0.01 * (1 + rng.random()),
                         "2026-01-01T00:00:00Z"))
            if failed:
                continue
            seq_f = math.exp(rng.gauss(0, 0.08))
            _write_run(con, run_id, L, H, D, tokens, P, ratio, miss * seq_f, err, layer_f, head_f, edges, rng)
    con.commit()
    con.close()


def _write_run(con, run_id, L, H, D, T, P, ratio, miss, err, layer_f, head_f, edges, rng):
    rows, sums = [], {}
    n = T - P
    fp16_bytes = 2 * D * 2 * (0.5 * (P + T) + 0.5)  # K and V, fp16, mean over the evaluated steps
    for l in range(L):
        for h in range(H):
            vals = head_values(miss, err, layer_f[l], head_f[l][h])
            vals["ratio"] = ratio if ratio == 1.0 else ratio * (1 + 0.002 * rng.random())
            vals["bytes"] = vals["ratio"] * fp16_bytes
            for metric, mean in vals.items():
                st = stats(metric, mean) if metric not in ("ratio", "bytes") else (mean, mean, mean, mean, mean)
                rows.append((run_id, l, h, metric, *st, n))
                acc = sums.setdefault(metric, [0.0] * 5)
                for i in range(5):
                    acc[i] += st[i] / (L * H)
    rows += [(run_id, -1, -1, metric, *acc, n * L * H) for metric, acc in sums.items()]
    con.executemany("INSERT INTO summaries VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    curves = []
    nb = len(edges) - 1
    for metric, acc in sums.items():
        mean = acc[0]
        for b in range(nb):
            # losses grow along the sequence as more of it has been evicted; quantization stays flat
            shape = 0.35 + 1.3 * (b + 0.5) / nb if miss > 0 else 1.0
            shape *= math.exp(rng.gauss(0, 0.04))
            if metric in HIGHER:
                v = 1.0 - (1.0 - mean) * shape
            elif metric in ("ratio", "bytes"):
                v = mean
            else:
                v = mean * shape
            curves.append((run_id, metric, b, edges[b], edges[b + 1], v))
    con.executemany("INSERT INTO curves VALUES(?, ?, ?, ?, ?, ?)", curves)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shape", default="stories260k", choices=sorted(SHAPES))
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--sequences", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--empty", action="store_true", help="schema and a trace row only, no runs")
    a = ap.parse_args()
    build(a.out, a.shape, a.tokens, a.sequences, a.seed, a.empty)
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
