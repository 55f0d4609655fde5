"""Figures from the results store: the Pareto front, strategies at matched memory, a layer x head heatmap
and fidelity along the sequence. Each draw_* function draws into given Axes so that the report figure
reuses them; the caller owns the figure."""
import math

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from kvsim_store import PlotError, best_under, better, metric_label, pareto_front
from kvsim_style import OKABE_ITO, percent, split_strategy, strategy_order, strategy_style

MEMORY_LABEL = "KV-cache memory (% of fp16 full cache)"
# Under protocol sparse the cache holds everything: a selector's x is what each step reads.
MEMORY_READ_LABEL = "KV-cache memory, or read per step (sparse) (% of fp16 full)"


def _log_span(values):
    v = np.asarray([x for x in values if x > 0 and math.isfinite(x)])
    return (v.max() / v.min()) if len(v) else 1.0


def choose_yscale(values, metric, requested="auto"):
    if requested != "auto":
        return requested
    if better(metric) > 0:
        return "linear"
    return "log" if _log_span(values) > 30 else "linear"


def _memory_axis(ax, ratios, sparse=False):
    ax.set_xscale("log", base=2)
    lo, hi = max(min(ratios), 1e-4), max(ratios)
    ax.set_xlim(2 ** (math.floor(math.log2(lo) * 2) / 2 - 0.15), 2 ** (math.ceil(math.log2(hi) * 2) / 2 + 0.15))
    ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_major_formatter(FuncFormatter(percent))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(MEMORY_READ_LABEL if sparse else MEMORY_LABEL)


def draw_pareto(ax, df, metric, stat="mean", yscale="auto"):
    """Every configuration as a point; per strategy its own front as a line; the overall front as a grey
    staircase with ringed points. On a log axis, values far below every compressed configuration (the full
    cache: 0, or float rounding such as 1e-7) sit on the bottom edge marked "exact". Returns legend handles."""
    scale = choose_yscale(df.value[df.strategy != "full"], metric, yscale)
    floor = None
    if scale == "log":
        pos = df.value[(df.value > 0) & (df.strategy != "full")]
        floor = pos.min() / 4 if len(pos) else 1e-9
    handles = []
    front = df.loc[pareto_front(df, metric)].sort_values("ratio")
    shown = front.value.clip(lower=floor) if floor else front.value
    ax.step(front.ratio, shown, where="post", color="#c8c8c8", lw=5, alpha=0.8, zorder=1, solid_capstyle="round")
    ring = front[front.value >= floor] if floor else front
    ax.scatter(ring.ratio, ring.value, s=52, facecolors="none", edgecolors="black", lw=0.7, zorder=4)
    exact = []
    for s in strategy_order(df.strategy):
        d = df[df.strategy == s].sort_values("ratio")
        st = strategy_style(s)
        own = d.loc[pareto_front(d, metric)].sort_values("ratio")
        if floor:
            exact += [(r, s) for r in d.ratio[d.value < floor]]
            d, own = d[d.value >= floor], own[own.value >= floor]
        ax.plot(own.ratio, own.value, color=st["color"], ls=st["linestyle"], lw=1.1, zorder=2)
        ax.plot(d.ratio, d.value, ls="none", marker=st["marker"], color=st["color"], mfc=st["mfc"], mec=st["mec"],
                ms=3.6, mew=0.8, zorder=3)
        handles.append(Line2D([], [], color=st["color"], ls=st["linestyle"], marker=st["marker"], mfc=st["mfc"],
                              mec=st["mec"], ms=3.6, label=s))
    handles.append(Line2D([], [], color="#c8c8c8", lw=4, marker="o", mfc="none", mec="black", ms=5.5,
                          label="Pareto front (all)"))
    ax.set_yscale(scale)
    _memory_axis(ax, df.ratio, sparse="protocol" in df and (df.protocol == "sparse").any())
    ax.set_ylabel(metric_label(metric, stat))
    if floor:
        ax.set_ylim(bottom=floor)
    if exact:
        for r, s in exact:
            st = strategy_style(s)
            ax.plot([r], [floor], marker=st["marker"], color=st["color"], mfc=st["mfc"], mec=st["mec"], ms=4.5,
                    clip_on=False, zorder=5)
        ax.annotate("exact", (max(r for r, _ in exact), floor), xytext=(0, 5), textcoords="offset points",
                    ha="center", va="bottom", fontsize=6)
    where = "up and left" if better(metric) > 0 else "down and left"
    ax.text(0.02, 0.02, f"better: {where}", transform=ax.transAxes, fontsize=6, color="#666666")
    return handles


def legend_below(fig_or_sub, ax_legend, handles, ncol=3):
    ax_legend.axis("off")
    ax_legend.legend(handles=handles, loc="upper center", ncol=ncol, handlelength=2.2, columnspacing=1.0,
                     handletextpad=0.4, borderaxespad=0.0, fontsize=6.5)


def draw_compare(ax, df, metric, target, strategies, show_labels=True, xscale="auto"):
    """Horizontal bars: for each strategy its best configuration with memory <= target."""
    pick = best_under(df, target, metric).set_index("strategy")
    rows = [s for s in strategies if s != "full"]
    y = np.arange(len(rows))[::-1]
    vals = [pick.value.get(s, np.nan) for s in rows]
    present = [v for v in vals if not np.isnan(v)]
    scale = xscale if xscale != "auto" else ("log" if better(metric) < 0 and _log_span(present) > 100 else "linear")
    best = None
    if present:
        best = (max if better(metric) > 0 else min)(present)
    for yi, s, v in zip(y, rows, vals):
        st = strategy_style(s)
        if np.isnan(v):
            ax.text(0.01, yi, "none ≤ budget", transform=ax.get_yaxis_transform(), va="center", fontsize=5.5,
                    color="#888888")
            continue
        _, codec = split_strategy(s)
        ax.barh(yi, v, height=0.72, color=st["color"], hatch="/////" if codec else None,
                edgecolor="black" if v == best else ("white" if codec else st["color"]),
                lw=1.0 if v == best else 0.3, log=(scale == "log"))
        ax.text(v, yi, f" {v:.3g}", va="center", ha="left", fontsize=5.5)
    ax.set_yticks(y)
    ax.set_yticklabels(rows)
    if not show_labels:
        ax.tick_params(axis="y", labelleft=False)
    ax.tick_params(axis="y", length=0)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.grid(axis="y", visible=False)
    if present:
        if scale == "log":
            ax.set_xscale("log")
            ax.set_xlim(min(present) / 2, max(present) * 4)
        else:
            ax.set_xlim(0, max(present) * 1.3 if max(present) > 0 else 1)
    ax.set_title(f"memory ≤ {percent(target)}")
    ax.set_xlabel(metric_label(metric))
    return len(present)


def pick_heatmap_config(df, metric, target, config=None):
    """The configuration a heatmap shows: --config (id or spec; a unique substring of a spec), else the best
    configuration with memory <= target."""
    if config:
        if config.isdigit() and int(config) in set(df.config_id):
            return df[df.config_id == int(config)].iloc[0]
        exact = df[df.spec == config]
        if len(exact) == 1:
            return exact.iloc[0]
        part = df[df.spec.str.contains(config, regex=False)]
        if len(part) == 1:
            return part.iloc[0]
        if len(part) > 1:
            if part.spec.nunique() == 1 and "protocol" in part and part.protocol.nunique() > 1:
                raise PlotError(f"--config '{config}' matches {part.spec.iloc[0]} under protocols "
                                f"{', '.join(sorted(part.protocol.unique()))}: choose one with --protocol")
            raise PlotError(f"--config '{config}' matches {len(part)} configurations (e.g. {part.spec.iloc[0]}, "
                            f"{part.spec.iloc[1]}): give the full spec or the config id")
        raise PlotError(f"--config '{config}': no such configuration in the selected runs")
    cand = best_under(df[df.strategy != "full"], target, metric)
    if cand.empty:
        raise PlotError(f"no configuration with memory ≤ {percent(target)}: choose --ratio or --config")
    return cand.sort_values("value", ascending=better(metric) < 0).iloc[0]


def draw_heatmap(fig, ax, heads, metric, stat, shape, title):
    L, H, Hkv = shape["L"], shape["H"], shape["Hkv"]
    grid = np.full((L, H), np.nan)
    for r in heads.itertuples():
        if 0 <= r.layer < L and 0 <= r.head < H:
            grid[r.layer, r.head] = r.value
    if np.isnan(grid).all():
        raise PlotError(f"no per-(layer, head) '{metric}' rows for this configuration")
    im = ax.imshow(grid, aspect="auto", origin="upper", interpolation="nearest",
                   cmap="viridis_r" if better(metric) > 0 else "viridis")
    cb = fig.colorbar(im, ax=ax, shrink=0.95, pad=0.02)
    cb.set_label(metric_label(metric, stat), fontsize=7)
    cb.ax.tick_params(labelsize=6)
    if L <= 16 and H <= 16:
        lo, hi = np.nanmin(grid), np.nanmax(grid)
        for l in range(L):
            for h in range(H):
                v = grid[l, h]
                if np.isnan(v):
                    continue
                dark = (v - lo) / (hi - lo + 1e-30) > 0.5
                if better(metric) > 0:
                    dark = not dark
                ax.text(h, l, f"{v:.2g}", ha="center", va="center", fontsize=5,
                        color="black" if dark else "white")
    G = H // Hkv if Hkv else 1
    if G > 1 and Hkv <= 16:
        for g in range(1, Hkv):
            ax.axvline(g * G - 0.5, color="white", lw=1.2 if Hkv <= 4 else 0.6)
    ax.set_xlabel(f"query head (white lines: KV groups of G = {G})" if G > 1 else "query head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(0, H, 1 if H <= 16 else (4 if H <= 64 else 8)))
    ax.set_yticks(range(0, L, 1 if L <= 16 else 4))
    ax.grid(False)
    ax.set_title(title, fontsize=6.5)


def draw_position(ax, store, df, metric, target, strategies, rows=None):
    """Per strategy, the best configuration with memory <= target: its metric along the sequence. Appends the
    plotted points to rows (a list) when given."""
    pick = best_under(df[df.strategy != "full"], target, metric).set_index("strategy")
    handles = []
    drawn = 0
    for s in strategies:
        if s not in pick.index:
            continue
        c = store.curve(int(pick.loc[s, "config_id"]), metric, pick.loc[s, "protocol"])
        if c.empty:
            continue
        if rows is not None:
            rows += [{"strategy": s, "spec": pick.loc[s, "spec"], "ratio": pick.loc[s, "ratio"], "pos_lo": r.pos_lo,
                      "pos_hi": r.pos_hi, metric: r.value} for r in c.itertuples()]
        st = strategy_style(s)
        ax.plot(c.pos, c.value, color=st["color"], ls=st["linestyle"], marker=st["marker"], mfc=st["mfc"],
                mec=st["mec"], ms=3, lw=1.1)
        handles.append(Line2D([], [], color=st["color"], ls=st["linestyle"], marker=st["marker"], mfc=st["mfc"],
                              mec=st["mec"], ms=3, label=f"{s} ({percent(pick.loc[s, 'ratio'])})"))
        drawn += 1
    if not drawn:
        raise PlotError(f"no per-position '{metric}' curves for configurations with memory ≤ {percent(target)}")
    vals = np.concatenate([l.get_ydata() for l in ax.get_lines()])
    ax.set_yscale(choose_yscale(vals, metric))
    ax.set_xlabel("position in the sequence (tokens)")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"memory ≤ {percent(target)} (best configuration of each strategy)", fontsize=7)
    return handles


def compare_legend_handles(strategies):
    codec = any(split_strategy(s)[1] for s in strategies)
    return ([Patch(facecolor="#bbbbbb", edgecolor="white", hatch="/////", label="with a quantization codec")]
            if codec else []) + [Patch(facecolor="white", edgecolor="black", label="best at this budget")]


__all__ = ["draw_pareto", "draw_compare", "draw_heatmap", "draw_position", "pick_heatmap_config", "legend_below",
           "compare_legend_handles", "OKABE_ITO"]
