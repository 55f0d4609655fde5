#!/usr/bin/python3
"""Do the offline replay's attention metrics predict the live model's perplexity?

On one model and one fixed text (default: stories260K and tools/scripts/ppl_text.txt):
  1. `kvsim record` records a trace of the text's tokens (plus --generate N greedy tokens);
  2. `kvsim run --prefill P` replays the trace through each configuration (offline metrics);
  3. `kvsim ppl --ids <the trace's own token ids> --prefill P` runs the same configurations with the
     strategy managing the live model's cache (Δppl against the full cache);
and prints, per configuration, the offline kl / out_rel_l2 / mass / tv / ratio next to Δppl, then the
Pearson and Spearman correlation of each offline metric with Δppl (Spearman: Pearson of average
ranks, computed here with numpy). Record and ppl see identical ids: ppl is given the ids read back
from the trace, and both use the same P. Run with Debian's python3 (numpy; matplotlib for --plot):

  /usr/bin/python3 tools/scripts/ppl_vs_offline.py [--kvsim build/kvsim] [--prefill 64] [--plot F.png]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = (
    [f"window:budget={b}" for b in (16, 32, 64, 128)]
    + [f"streaming:budget={b}" for b in (16, 32, 64, 128)]
    + [f"h2o:budget={b}" for b in (16, 32, 64, 128)]
    + [f"tova:budget={b}" for b in (16, 32, 64)]
    + [f"snapkv:budget={b},window=8" for b in (32, 64)]
    + [f"knorm:budget={b}" for b in (64, 128)]
    + ["entropy_merge:budget=64", "cms_aggregate:budget=32", "kivi:bits=2", "nf4", "h2o:budget=64+kivi:bits=2"]
)
# Offline metrics, oriented so that larger means more distortion.
METRICS = [
    ("kl", lambda s: s["kl"]["mean"]),
    ("out_rel_l2", lambda s: s["out_rel_l2"]["mean"]),
    ("1-mass", lambda s: 1.0 - s["mass"]["mean"]),
    ("tv", lambda s: s["tv"]["mean"]),
    ("1-out_cos", lambda s: 1.0 - s["out_cos"]["mean"]),
]


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ppl_vs_offline: {' '.join(cmd[:2])} failed (exit {r.returncode}): {r.stderr.strip()}")
    return r.stdout


def ranks(x):
    """Ranks 1..n, ties get the mean of their ranks."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        r[tie] = r[tie].mean()
    return r


def pearson(x, y):
    x, y = np.asarray(x, float) - np.mean(x), np.asarray(y, float) - np.mean(y)
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def spearman(x, y):
    return pearson(ranks(x), ranks(y))


def record_ids(a, d):
    trace = os.path.join(d, "text.h5")
    with open(a.text) as f:
        text = f.read()
    run([a.kvsim, "record", "--model", a.model, "--prompt", text, "--generate", str(a.generate), "--out", trace,
         "--backend", "cpu", "--quiet"])
    with h5py.File(trace, "r") as f:
        seq = f["sequences"][sorted(f["sequences"].keys())[0]]
        ids = [int(x) for x in seq["tokens"][...]]
    return trace, ids


def plot(path, rows, dppl):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sys.path.insert(0, os.path.join(ROOT, "plots"))
    from kvsim_style import STRATEGY_STYLE
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    for ax, (name, _) in zip(axes, METRICS[:3]):
        for r, y in zip(rows, dppl):
            base = r["spec"].split("+")[0].split(":")[0]
            colour, marker = STRATEGY_STYLE.get(base, ("#000000", "o"))
            hollow = "+" in r["spec"] or base in ("kivi", "nf4", "quant")
            ax.scatter(r[name], y, c="none" if hollow else colour, edgecolors=colour, marker=marker, s=28,
                       label=base)
        if name == "1-mass":  # pure codecs keep every token: 1 - mass is 0 up to rounding
            ax.set_xscale("symlog", linthresh=1e-3)
        else:
            ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_xlabel(f"offline {name} (mean)")
        ax.set_title(f"Spearman {spearman([r[name] for r in rows], dppl):+.2f}", fontsize=9)
    axes[0].set_ylabel("Δppl (live, vs full; symlog)")
    handles, labels = axes[0].get_legend_handles_labels()
    uniq = {}
    for label, handle in zip(labels, handles):
        uniq.setdefault(label, handle)
    fig.legend(uniq.values(), uniq.keys(), loc="upper center", ncol=len(uniq), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=150)
    print(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvsim", default=os.path.join(ROOT, "build", "kvsim"))
    ap.add_argument("--model", default=os.path.join(ROOT, "..", "shared", "models", "stories260K", "stories260K.bin"))
    ap.add_argument("--text", default=os.path.join(ROOT, "tools", "scripts", "ppl_text.txt"))
    ap.add_argument("--generate", type=int, default=0, help="greedy tokens appended after the text (must fit the context)")
    ap.add_argument("--prefill", type=int, default=64)
    ap.add_argument("--strategy", action="append", help="configurations (default: a fixed set of 25)")
    ap.add_argument("--plot", help="also write a scatter plot (PNG) of Δppl against kl, out_rel_l2, 1-mass")
    ap.add_argument("--json-out", help="write every number to this JSON file")
    a = ap.parse_args()
    configs = a.strategy or CONFIGS
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="kvsim-ppl-") as d:
        trace, ids = record_ids(a, d)
        offline = json.loads(run([a.kvsim, "run", "--trace", trace, "--prefill", str(a.prefill), "--json", "--quiet",
                                  "--stats-cache", "off"] + sum((["--strategy", s] for s in configs), [])))
    online = json.loads(run([a.kvsim, "ppl", "--model", a.model, "--ids", " ".join(map(str, ids)), "--prefill",
                             str(a.prefill), "--json", "--quiet"] + sum((["--strategy", s] for s in configs), [])))
    assert online["T"] == offline["T"] == len(ids) and online["prefill"] == offline["prefill"] == a.prefill
    by_spec = {r["spec"]: r for r in online["results"]}
    rows = []
    for c in offline["results"]:
        row = {"spec": c["spec"], "ratio_offline": c["summary"]["ratio"]["mean"]}
        for name, get in METRICS:
            row[name] = get(c["summary"])
        on = by_spec[c["spec"]]
        row.update(ppl=on["ppl"], dppl=on["delta_ppl"], ratio_online=on["ratio"])
        rows.append(row)
    full = by_spec["full"]
    print(f"model {a.model}\ntext {a.text}: T = {len(ids)} tokens, P = {a.prefill}, {len(ids) - a.prefill} scored; "
          f"full-cache ppl {full['ppl']:.4f}")
    print(f"{'configuration':34s} {'ratio':>6s} {'ratio_on':>8s} {'kl':>9s} {'out_rel_l2':>10s} {'mass':>7s} "
          f"{'tv':>7s} {'ppl':>8s} {'Δppl':>8s}")
    for r in sorted(rows, key=lambda r: r["dppl"]):
        print(f"{r['spec']:34s} {r['ratio_offline']:6.3f} {r['ratio_online']:8.3f} {r['kl']:9.3e} "
              f"{r['out_rel_l2']:10.4f} {1 - r['1-mass']:7.4f} {r['tv']:7.4f} {r['ppl']:8.4f} {r['dppl']:+8.4f}")
    dppl = [r["dppl"] for r in rows]
    print(f"\ncorrelation with Δppl over {len(rows)} configurations")
    print(f"{'offline metric':16s} {'Pearson':>8s} {'Spearman':>9s}")
    corr = {}
    for name, _ in METRICS:
        x = [r[name] for r in rows]
        corr[name] = {"pearson": pearson(x, dppl), "spearman": spearman(x, dppl)}
        print(f"{name:16s} {corr[name]['pearson']:+8.3f} {corr[name]['spearman']:+9.3f}")
    seconds = time.time() - t0
    print(f"\n{seconds:.1f} s (record, kvsim run, kvsim ppl)")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"T": len(ids), "prefill": a.prefill, "full_ppl": full["ppl"], "rows": rows,
                       "correlation": corr, "seconds": seconds}, f, indent=2)
    if a.plot:
        plot(a.plot, rows, dppl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
