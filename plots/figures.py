"""Assembles each plot kind's figure (and the multi-panel report) from the draw_* functions."""
import textwrap

import matplotlib.pyplot as plt
import pandas as pd

import memory_figure as mem
import prefix_figure
import model_shapes
import store_figures as sf
import trace_figures as tf
from kvsim_store import PlotError, best_under, better, metric_label, pareto_front
from kvsim_style import SIZES, percent, strategy_order, wrap_spec

DEFAULT_TARGET = 0.25
COMPARE_TARGETS = [0.125, 0.25, 0.5]


def build(a, store):
    """(figure, synthetic?, table of the plotted numbers or None) for the parsed arguments a and an open Store
    (or None)."""
    fn = {"pareto": pareto, "compare": compare, "heatmap": heatmap, "position": position, "trace": trace,
          "memory": memory, "report": report, "prefix": prefix}[a.kind]
    return fn(a, store)


def _fig(a, kind, default=None):
    return plt.figure(figsize=a.size or default or SIZES[kind])


def _with_legend(a, kind, n_entries, ncol=3, default=None):
    """A figure with the plot above and a legend strip below, sized for n_entries."""
    fig = _fig(a, kind, default)
    rows = -(-n_entries // ncol)
    h = fig.get_figheight()
    leg_h = min(0.45 * h, 0.115 * rows + 0.02)
    gs = fig.add_gridspec(2, 1, height_ratios=[h - leg_h, leg_h])
    return fig, fig.add_subplot(gs[0]), fig.add_subplot(gs[1])


def _target(a):
    return a.ratio[0] if a.ratio else DEFAULT_TARGET


def pareto(a, store):
    df = store.configs(a.metric, a.stat)
    n = df.strategy.nunique() + 1
    fig, ax, lax = _with_legend(a, "pareto", n)
    handles = sf.draw_pareto(ax, df, a.metric, a.stat, a.yscale or "auto")
    ax.set_title(f"{store.describe()}: {len(df)} configurations", fontsize=7)
    sf.legend_below(fig, lax, handles)
    table = df.assign(on_front=df.index.isin(pareto_front(df, a.metric)))
    return fig, store.synthetic, _columns(table.rename(columns={"value": a.metric}), a.metric, ["on_front"])


def compare(a, store):
    df = store.configs(a.metric, a.stat)
    targets = a.ratio or COMPARE_TARGETS
    strategies = [s for s in strategy_order(df.strategy) if s != "full"]
    if not strategies:
        raise PlotError(f"{a.db}: only the full cache in the selected runs: nothing to compare")
    default = compare_size(len(targets))
    fig = _fig(a, "compare", default)
    gs = fig.add_gridspec(2, len(targets), height_ratios=[1, 0.07])
    drawn = 0
    axes = []
    for i, t in enumerate(targets):
        ax = fig.add_subplot(gs[0, i], sharey=axes[0] if axes else None)
        drawn += sf.draw_compare(ax, df, a.metric, t, strategies, show_labels=(i == 0))
        if i:
            ax.tick_params(axis="y", labelleft=False)
        ax.set_xlabel(metric_label(a.metric, a.stat))
        axes.append(ax)
    if not drawn:
        raise PlotError(f"no configuration has memory ≤ {', '.join(percent(t) for t in targets)}: choose --ratio")
    lax = fig.add_subplot(gs[1, :])
    lax.axis("off")
    lax.legend(handles=sf.compare_legend_handles(strategies), loc="center", ncol=2, fontsize=6.5)
    sep = ": " if len(targets) > 1 else "\n"
    fig.suptitle(f"{store.describe()}{sep}each strategy's best configuration within the memory budget", fontsize=7)
    table = pd.concat([best_under(df[df.strategy != "full"], t, a.metric).assign(budget=t) for t in targets])
    return fig, store.synthetic, _columns(table.rename(columns={"value": a.metric}), a.metric, ["budget"])


def compare_size(n_targets):
    """One column for one budget, two columns for two or three, wider beyond."""
    if n_targets == 1:
        return SIZES["compare1"]
    if n_targets <= 3:
        return SIZES["compare"]
    return (min(14.0, 2.3 * n_targets), SIZES["compare"][1])


def heatmap(a, store):
    df = store.configs(a.metric, a.stat)
    row = sf.pick_heatmap_config(df, a.metric, _target(a), a.config)
    heads = store.heads(int(row.config_id), a.metric, a.stat, row.protocol)
    fig = _fig(a, "heatmap")
    ax = fig.add_subplot()
    sf.draw_heatmap(fig, ax, heads, a.metric, a.stat, store.shape,
                    f"{wrap_spec(row.spec)}\nmemory {percent(row.ratio)}, {a.stat} {row.value:.3g}")
    return fig, store.synthetic, heads.rename(columns={"value": a.metric}).assign(spec=row.spec)


def position(a, store):
    df = store.configs(a.metric, "mean")
    strategies = [s for s in strategy_order(df.strategy) if s != "full"]
    fig, ax, lax = _with_legend(a, "position", len(strategies), ncol=2)
    rows = []
    handles = sf.draw_position(ax, store, df, a.metric, _target(a), strategies, rows)
    sf.legend_below(fig, lax, handles, ncol=2)
    return fig, store.synthetic, pd.DataFrame(rows)


def _memory_args(a, store):
    if a.capacity:
        shape, _, weights, gpu, batch = mem.load_capacity(a.capacity)
        return None, None, shape, a.gpu_gib or gpu, weights, a.batch or batch
    shape = model_shapes.parse_shape(a.shape or "llama3-8b")
    weights = mem.weights_gib_of(shape, a.minus_weights, a.weights_gib)
    quality = a.quality if a.quality is not None else model_shapes.DEFAULT_QUALITY.get(a.metric, 0.1)
    df = store.configs(a.metric, "mean") if store is not None else None
    return df, quality, shape, a.gpu_gib or 80.0, weights, a.batch or 1


def memory(a, store):
    df, quality, shape, gpu, weights, batch = _memory_args(a, store)
    lines = mem.load_capacity(a.capacity)[1] if a.capacity else mem.memory_lines(df, a.metric, quality)
    n = len(lines)
    ncol = 1 if n <= 10 else 2
    fig, ax, lax = _with_legend(a, "memory", n, ncol=ncol)
    handles, rows = mem.draw_memory(ax, df, a.metric, quality, shape, gpu, weights, batch, a.max_tokens, lines)
    sf.legend_below(fig, lax, handles, ncol=ncol)
    return fig, bool(store and store.synthetic), pd.DataFrame(rows)


def prefix(a, store):
    workload, by_codec = prefix_figure.load_results(a.prefix_json)
    fig, ax, lax = _with_legend(a, "prefix", len(by_codec), ncol=1)
    handles, rows = prefix_figure.draw_prefix(ax, workload, by_codec, prefix_figure.check_hit(a.hit or "token"))
    sf.legend_below(fig, lax, handles, ncol=1)
    return fig, False, pd.DataFrame(rows)


def trace(a, store):
    st = tf.analyse(a.trace, a.sequence, a.steps or 48, a.sinks or 4)
    fig = _fig(a, "trace")
    tf.draw_trace_figure(fig, st)
    L, H = st["sink"].shape
    table = pd.DataFrame([{"layer": l, "head": h, "sink_mass": st["sink"][l, h]} for l in range(L) for h in range(H)])
    return fig, st["synthetic"], table


def report(a, store):
    """(a) Pareto front, (b) strategies at matched memory, shared legend, (c) fidelity along the sequence,
    (d) layer x head heatmap of the best configuration, (e) memory and OOM, (f) attention sinks (with
    --trace) or the retained-mass Pareto front."""
    metric, target = a.metric, _target(a)
    df = store.configs(metric, a.stat)
    strategies = strategy_order(df.strategy)
    fig = _fig(a, "report")
    rows = -(-(len(strategies) + 1) // 5)
    gs = fig.add_gridspec(4, 2, height_ratios=[2.7, 0.14 * rows + 0.1, 2.5, 2.6])
    ax = fig.add_subplot(gs[0, 0])
    handles = sf.draw_pareto(ax, df, metric, a.stat)
    _panel_title(ax, "(a) memory against error, all configurations", 8)
    ax = fig.add_subplot(gs[0, 1])

    def bars():
        if not sf.draw_compare(ax, df, metric, target, [s for s in strategies if s != "full"]):
            raise PlotError(f"no configuration with memory ≤ {percent(target)}")

    _optional_panel(ax, bars)
    _panel_title(ax, f"(b) best of each strategy at memory ≤ {percent(target)}", 8)
    lax = fig.add_subplot(gs[1, :])
    lax.axis("off")
    lax.legend(handles=handles, loc="center", ncol=5, fontsize=6.5, handlelength=2.2, columnspacing=1.2)
    ax = fig.add_subplot(gs[2, 0])
    _optional_panel(ax, lambda: sf.draw_position(ax, store, df, metric, target, [s for s in strategies if s != "full"]))
    _panel_title(ax, f"(c) {metric} along the sequence, memory ≤ {percent(target)}", 8)
    ax = fig.add_subplot(gs[2, 1])

    def heat():
        row = sf.pick_heatmap_config(df, metric, target, a.config)
        sf.draw_heatmap(fig, ax, store.heads(int(row.config_id), metric, a.stat, row.protocol), metric, a.stat, store.shape, "")
        return f"{row.strategy} at {percent(row.ratio)} memory"

    what = _optional_panel(ax, heat)
    _panel_title(ax, f"(d) per head: {what or 'no configuration'}", 7)
    ax = fig.add_subplot(gs[3, 0])
    mdf, quality, shape, gpu, weights, batch = _memory_args(a, store)
    mh, _ = mem.draw_memory(ax, mdf, metric, quality, shape, gpu, weights, batch)
    _panel_title(ax, f"(e) KV memory, {shape[0]}, {metric} {'≥' if better(metric) > 0 else '≤'} {quality:g}", 7)
    longest = sorted(mh[1:], key=lambda h: -_oom_of(h))[:5]  # the five that reach furthest, in ratio order
    keep = [mh[0]] + [h for h in mh[1:] if h in longest]
    ax.legend(handles=keep, loc="lower right", fontsize=5, handlelength=2.0, borderaxespad=0.2)
    ax = fig.add_subplot(gs[3, 1])
    synthetic = store.synthetic
    if a.trace:
        st = tf.analyse(a.trace, None, a.steps or 32, a.sinks or 4)
        tf.draw_sink(fig, ax, st)
        _panel_title(ax, f"(f) attention-sink mass, {st['model']}", 7)
        synthetic = synthetic or st["synthetic"]
    else:
        mdf2 = store.configs("mass", "mean") if "mass" in store.metrics else None
        if mdf2 is not None:
            sf.draw_pareto(ax, mdf2, "mass", "mean")
        _panel_title(ax, "(f) memory against retained attention mass", 7)
    fig.suptitle(f"kvsim report: {store.describe()}", fontsize=9)
    return fig, synthetic, None


def _optional_panel(ax, draw):
    """Draws a report panel; data the store lacks (no curves, no per-head rows) leaves a note, not a failure."""
    try:
        return draw()
    except PlotError as e:
        ax.cla()
        ax.axis("off")
        t = ax.text(0.5, 0.5, textwrap.fill(str(e), 48, break_long_words=True), ha="center", va="center",
                    fontsize=6.5, color="#666666", transform=ax.transAxes)
        t.set_in_layout(False)
        return None


def _columns(df, metric, extra):
    # ratio: the memory ratio, or under protocol sparse the read ratio (kvsim_store.Store.configs)
    return df[["strategy", "protocol", "spec", "params_json", "ratio", metric, "n_runs"] + extra]


def _panel_title(ax, text, size):
    """The report's panel letter and title, left-aligned, replacing the single figure's centred title."""
    ax.set_title("")
    ax.set_title(text, loc="left", fontsize=size)


def _oom_of(handle):
    label = handle.get_label()
    v = label.rsplit(": ", 1)[-1]
    mult = {"K": 2 ** 10, "M": 2 ** 20}.get(v[-1:], 1)
    try:
        return float(v.rstrip("KM")) * mult
    except ValueError:
        return 0.0
