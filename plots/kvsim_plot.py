#!/usr/bin/python3
"""kvsim plot KIND (--db F | --trace F) --out DIR [options]: figures from the results store and from traces.

Run through `kvsim plot` (which execs Debian's /usr/bin/python3 on this file) or directly. Writes
DIR/NAME.png and DIR/NAME.pdf (NAME defaults to KIND) and prints the paths. Bad input is one line on
stderr and exit status 2; set KVSIM_DEBUG=1 for a traceback on unexpected failures (exit 1).
"""
import argparse
import os
import sys

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kvsim_store import METRICS, QUALITY_METRICS, STATS, PlotError, Store, check_metric  # noqa: E402
from model_shapes import parse_shape  # noqa: E402

KINDS = {
    "pareto": "memory ratio against a metric, one line per strategy, the Pareto front marked (--db)",
    "compare": "strategies side by side at matched memory ratios (--db)",
    "heatmap": "layer x head of one metric for one configuration (--db)",
    "position": "a metric along the sequence, per strategy (--db; the store's curves)",
    "trace": "attention sinks, entropy, heavy hitters and key outliers straight from a trace (--trace)",
    "memory": "KV-cache bytes against sequence length, a GPU's memory and where each strategy runs out (--db or "
              "--capacity optional)",
    "report": "one multi-panel figure of the main plots (--db, and --trace for the trace panel)",
    "prefix": "prefix-cache hit rate against capacity, one line per codec (--prefix-json: `kvsim prefix --json`)",
}
STORE_KINDS = {"pareto", "compare", "heatmap", "position", "report"}
# Options that only some kinds read; giving one to another kind is a usage error rather than silently ignored.
OPTION_KINDS = {
    "metric": {"pareto", "compare", "heatmap", "position", "memory", "report"},
    "stat": {"pareto", "compare", "heatmap"},
    "ratio": {"compare", "heatmap", "position", "report"},
    "strategy": STORE_KINDS | {"memory"},
    "model": STORE_KINDS | {"memory"},
    "config": {"heatmap", "report"},
    "yscale": {"pareto"},
    "steps": {"trace", "report"},
    "sinks": {"trace", "report"},
    "shape": {"memory", "report"},
    "gpu_gib": {"memory", "report"},
    "weights_gib": {"memory", "report"},
    "minus_weights": {"memory", "report"},
    "batch": {"memory", "report"},
    "quality": {"memory", "report"},
    "max_tokens": {"memory"},
    "capacity": {"memory"},
    "prefix_json": {"prefix"},
    "hit": {"prefix"},
    "csv": set(KINDS) - {"report"},
}


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise PlotError(message)


def parse(argv):
    ap = Parser(prog="kvsim plot", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="kinds:\n" + "\n".join(f"  {k:9s} {v}" for k, v in KINDS.items()) +
                "\n\nmetrics: " + ", ".join(QUALITY_METRICS))
    ap.add_argument("kind", metavar="KIND", help="one of: " + ", ".join(KINDS))
    ap.add_argument("--db", help="results store (sim/store/STORE.md)")
    ap.add_argument("--trace", help="trace file (traces/FORMAT.md)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--name", help="file name stem, no directories (default: KIND)")
    ap.add_argument("--format", default="png,pdf", help="comma-separated: png, pdf, svg (default png,pdf)")
    ap.add_argument("--dpi", type=int, default=300, help="PNG resolution (default 300, at least 150)")
    ap.add_argument("--size", help="figure size in inches, WxH (default: per kind, 3.5 in wide for one column)")
    ap.add_argument("--csv", action="store_true", default=None,
                    help="also write DIR/NAME.csv with the numbers the figure shows (not for report)")
    ap.add_argument("--quiet", action="store_true", help="print nothing on success")
    g = ap.add_argument_group("store selection")
    g.add_argument("--metric", help="metric (default out_rel_l2)")
    g.add_argument("--stat", choices=STATS, help="statistic over steps (default mean)")
    g.add_argument("--ratio", type=float, action="append",
                   help="target memory ratio (compare: repeatable, default 0.125 0.25 0.5; others 0.25)")
    g.add_argument("--strategy", action="append", help="only this strategy (repeatable)")
    g.add_argument("--model", help="only runs on traces whose model or path contains this")
    g.add_argument("--sequence", action="append", help="only this sequence (repeatable)")
    g.add_argument("--protocol", action="append", choices=["evict", "prefill", "sparse"],
                   help="only runs under this protocol (repeatable; with several, each strategy gets one line per "
                        "protocol, labelled 'h2o (prefill)'; sparse runs are placed by their read ratio)")
    g.add_argument("--config", help="heatmap: the configuration (id, spec, or a unique part of a spec)")
    g.add_argument("--yscale", choices=["auto", "linear", "log"], help="pareto: y axis scale (default auto)")
    g = ap.add_argument_group("trace")
    g.add_argument("--steps", type=int, help="query steps sampled per sequence (default 48)")
    g.add_argument("--sinks", type=int, help="tokens counted as attention sinks (default 4)")
    g = ap.add_argument_group("memory")
    g.add_argument("--shape", help="model shape: a name (llama3-8b, ...) or LxHkvxD (default llama3-8b)")
    g.add_argument("--gpu-gib", type=float, help="GPU memory in GiB (default 80)")
    g.add_argument("--weights-gib", type=float, help="subtract this much for the model's weights")
    g.add_argument("--minus-weights", action="store_true", default=None,
                   help="subtract the named shape's bf16 weights")
    g.add_argument("--batch", type=int, help="sequences in the batch (default 1)")
    g.add_argument("--quality", type=float,
                   help="worst acceptable value of --metric for a strategy's configuration (default per metric)")
    g.add_argument("--max-tokens", type=int, help="right end of the length axis")
    g.add_argument("--capacity", help="the JSON of `kvsim capacity --json`: its shape, weights, batch, first memory "
                                      "size and each strategy's measured ratio (instead of --db and --shape)")
    g = ap.add_argument_group("prefix")
    g.add_argument("--prefix-json", action="append",
                   help="output of `kvsim prefix --json` (repeatable: the codecs of several runs on one figure)")
    g.add_argument("--hit", help="token (default) or request hit rate")
    a = ap.parse_args(argv)
    validate(a)
    return a


def validate(a):
    if a.kind not in KINDS:
        raise PlotError(f"unknown plot kind '{a.kind}' (choose {', '.join(KINDS)})")
    for opt, kinds in OPTION_KINDS.items():
        if getattr(a, opt) is not None and a.kind not in kinds:
            raise PlotError(f"--{opt.replace('_', '-')} does not apply to '{a.kind}' plots")
    if a.kind in STORE_KINDS and not a.db:
        raise PlotError(f"'{a.kind}' plots read a results store: give --db FILE")
    if a.kind == "trace" and not a.trace:
        raise PlotError("'trace' plots read a trace: give --trace FILE")
    if a.kind == "prefix" and not a.prefix_json:
        raise PlotError("'prefix' plots read `kvsim prefix --json` output: give --prefix-json FILE")
    if a.trace and a.kind not in ("trace", "report"):
        raise PlotError(f"--trace does not apply to '{a.kind}' plots")
    if a.db and a.kind == "trace":
        raise PlotError("--db does not apply to 'trace' plots")
    if a.trace and not os.path.exists(a.trace):
        raise PlotError(f"{a.trace}: no such trace")
    if a.db and not os.path.exists(a.db):
        raise PlotError(f"{a.db}: no such results store")
    if a.name is not None:
        check_name(a.name)
    a.formats = [f.strip().lower() for f in a.format.split(",") if f.strip()]
    for f in a.formats:
        if f not in ("png", "pdf", "svg"):
            raise PlotError(f"--format: unknown format '{f}' (choose png, pdf, svg)")
    if a.dpi < 150 or a.dpi > 1200:
        raise PlotError(f"--dpi {a.dpi}: choose 150 to 1200")
    if a.size:
        try:
            w, h = (float(x) for x in a.size.lower().split("x"))
            assert 1 <= w <= 30 and 1 <= h <= 30
            a.size = (w, h)
        except (ValueError, AssertionError):
            raise PlotError(f"--size '{a.size}': expected WxH in inches, e.g. 3.5x2.6") from None
    if a.metric is not None:
        check_metric(a.metric, metrics_of(a.kind))
    a.metric = a.metric or "out_rel_l2"
    a.stat = a.stat or "mean"
    for r in a.ratio or []:
        if not 0 < r <= 1:
            raise PlotError(f"--ratio {r:g}: a memory ratio is in (0, 1]")
    if a.shape is not None:
        parse_shape(a.shape)
    if a.steps is not None and a.steps < 1:
        raise PlotError(f"--steps {a.steps}: at least 1")
    if a.sinks is not None and a.sinks < 1:
        raise PlotError(f"--sinks {a.sinks}: at least 1")
    if a.batch is not None and a.batch < 1:
        raise PlotError(f"--batch {a.batch}: at least 1")
    if a.capacity is not None:
        if a.db or a.shape or a.weights_gib is not None or a.minus_weights or a.quality is not None:
            raise PlotError("--capacity brings the shape, weights and ratios: it does not go with --db, --shape, "
                            "--weights-gib, --minus-weights or --quality")
        if not os.path.exists(a.capacity):
            raise PlotError(f"{a.capacity}: no such file")
    if a.gpu_gib is not None and a.gpu_gib <= 0:
        raise PlotError(f"--gpu-gib {a.gpu_gib:g}: must be positive")


def metrics_of(kind):
    """The metrics a figure can show: memory (bytes, ratio) too along the sequence and per (layer, head), where
    the heatmap then shows an allocator's per-head budgets (adakv.snapkv); quality metrics elsewhere."""
    return METRICS if kind in ("position", "heatmap") else QUALITY_METRICS


def check_name(name):
    """--name is a file name stem inside --out: no directories, so nothing is written outside --out."""
    if not name or "/" in name or os.sep in name or (os.altsep and os.altsep in name) or "\0" in name:
        raise PlotError(f"--name {name!r}: a file name stem without directories (the files go in --out)")


def open_store(a):
    return Store(a.db, model=a.model, strategies=a.strategy, sequences=a.sequence, protocols=a.protocol)


def main(argv):
    a = parse(argv)
    store = open_store(a) if a.db else None
    if store is not None and a.kind != "memory":
        store.require_metric(a.metric, metrics_of(a.kind))
    elif store is not None:
        store.require_metric(a.metric)
    if store is not None and a.kind == "position" and not store.has_curves(a.metric):
        raise PlotError(f"{a.db}: no per-position curves of '{a.metric}' in the selected runs")

    import kvsim_style

    kvsim_style.setup_matplotlib()
    import figures  # noqa: E402 - needs matplotlib set up first

    fig, synthetic, table = figures.build(a, store)
    kvsim_style.synthetic_note(fig, synthetic)
    paths = kvsim_style.save(fig, a.out, a.name or a.kind, a.formats, a.dpi)
    if a.csv and table is not None:
        paths.append(os.path.join(a.out, f"{a.name or a.kind}.csv"))
        table.to_csv(paths[-1], index=False, float_format="%.6g")
    if not a.quiet:
        for p in paths:
            print(p)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except PlotError as e:
        print(f"kvsim plot: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - one line unless debugging
        if os.environ.get("KVSIM_DEBUG"):
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"kvsim plot: error: {type(e).__name__}: {msg} (KVSIM_DEBUG=1 for a traceback)", file=sys.stderr)
        sys.exit(1)
