"""KV-cache memory against sequence length: the fp16 full cache of a model shape and each strategy at its
smallest measured memory ratio that meets a quality bound, a GPU's memory (optionally minus the model's
weights) and the sequence length at which each runs out of it.

A strategy's bytes are its measured mean `ratio` times the fp16 full cache, so the ratio is assumed to stay
the same at every length (true for budgets given as a ratio and for codecs; a budget in tokens would
flatten out instead)."""
import json
import math
import os

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from kvsim_store import PlotError, better
from kvsim_style import percent, strategy_order, strategy_style

GIB = 1024 ** 3
def full_bytes_per_token(L, Hkv, D):
    return 2 * L * Hkv * D * 2  # K and V, fp16


def select(df, metric, quality):
    """Per strategy, the configuration with the smallest ratio whose value meets the quality bound."""
    ok = df[df.value >= quality] if better(metric) > 0 else df[df.value <= quality]
    ok = ok[ok.strategy != "full"]
    if ok.empty:
        return ok
    return ok.loc[ok.groupby("strategy").ratio.idxmin().values]


def draw_memory(ax, df, metric, quality, shape, gpu_gib, weights_gib, batch, max_tokens=None, lines=None):
    """Returns (legend handles, rows of label, ratio, GiB per 1K tokens, OOM length). df may be None (no store:
    the full cache alone); lines, when given ((label, ratio, style strategy), from load_capacity), replace the
    store's."""
    label, L, Hkv, D, _ = shape
    per_tok = full_bytes_per_token(L, Hkv, D) * batch
    avail = (gpu_gib - weights_gib) * GIB
    if avail <= 0:
        raise PlotError(f"--gpu-gib {gpu_gib:g} leaves nothing after {weights_gib:.1f} GiB of weights")
    lines = lines or memory_lines(df, metric, quality)
    oom = {name: avail / (per_tok * r) for name, r, _ in lines}
    hi = max_tokens or 2 ** math.ceil(math.log2(max(oom.values()) * 1.6))
    hi = min(max(hi, 2 ** 12), 2 ** 30)
    T = np.logspace(10, math.log2(hi), 200, base=2)
    handles = []
    for name, r, style_of in lines:
        st = strategy_style(style_of)
        gib = per_tok * r * T / GIB
        ax.plot(T, gib, color=st["color"], ls=st["linestyle"], lw=1.1 if name != lines[0][0] else 1.6)
        t_oom = oom[name]
        if t_oom <= hi:
            ax.plot([t_oom], [avail / GIB], marker=st["marker"], color=st["color"], mfc=st["mfc"], mec=st["mec"],
                    ms=4.5, zorder=4)
        handles.append(Line2D([], [], color=st["color"], ls=st["linestyle"], marker=st["marker"], mfc=st["mfc"],
                              mec=st["mec"], ms=3.5,
                              label=f"{percent(r)} {name}: {tokens_str(t_oom)}"))
    ax.axhline(gpu_gib, color="black", lw=0.9, ls="-")
    ax.text(T[0] * 1.1, gpu_gib * 1.08, f"GPU {gpu_gib:g} GiB", fontsize=6, va="bottom")
    if weights_gib > 0:
        ax.axhline(avail / GIB, color="#666666", lw=0.8, ls="--")
        ax.text(T[0] * 1.1, avail / GIB / 1.08, f"left after {weights_gib:.1f} GiB of weights", fontsize=6,
                va="top", color="#444444")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlim(T[0], T[-1])
    ax.set_ylim(per_tok * min(r for _, r, _ in lines) * T[0] / GIB / 1.5, gpu_gib * 4)
    ax.xaxis.set_major_locator(LogLocator(base=2, numticks=30))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: tokens_str(v) if _is_even_pow2(v) else ""))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.set_xlabel("sequence length (tokens)" + (f", batch {batch}" if batch > 1 else ""))
    ax.set_ylabel("KV-cache memory (GiB)")
    title = f"{label} (L={L}, Hkv={Hkv}, D={D})"
    if df is None and len(lines) > 1:
        title += "\neach strategy at its ratio measured by kvsim capacity;\nlegend: memory ratio, strategy: sequence length at OOM"
    if df is not None:
        rel = "≥" if better(metric) > 0 else "≤"
        title += f"\neach strategy at its least memory with {metric} {rel} {quality:g};\nlegend: memory ratio, strategy: sequence length at OOM"
    ax.set_title(title, fontsize=7)
    rows = [{"line": name, "ratio": r, "gib_per_1k_tokens": per_tok * r * 1024 / GIB, "oom_tokens": int(oom[name])}
            for name, r, _ in lines]
    return handles, rows


def _group_ties(pairs):
    """(label, ratio, style strategy) per distinct ratio: strategies whose chosen ratios agree within 0.5%
    draw one line (they would overlap exactly), named together."""
    groups = []
    for s, r in sorted(pairs, key=lambda x: -x[1]):
        if groups and abs(groups[-1][1] - r) <= 0.005 * r:
            groups[-1][0].append(s)
        else:
            groups.append(([s], r))
    out = []
    for names, r in groups:
        names = strategy_order(names)
        label = ", ".join(names[:2]) + (f" +{len(names) - 2}" if len(names) > 2 else "")
        out.append((label, sum(r2 for s2, r2 in pairs if s2 in names) / len(names), names[0]))
    return out


def memory_lines(df, metric, quality):
    """(label, ratio, strategy whose style it takes): the full cache, then one line per distinct ratio."""
    lines = [("full (fp16)", 1.0, "full")]
    if df is not None:
        pick = select(df, metric, quality).set_index("strategy")
        lines += _group_ties([(s, float(pick.ratio[s])) for s in strategy_order(pick.index)])
    return lines


def load_capacity(path):
    """The output of `kvsim capacity --json`: (shape, lines, weights GiB, GPU GiB, batch). Lines are the
    strategies in their order with their measured ratios; the GPU is the first --memory size; weights include
    the reserve."""
    try:
        with open(path) as f:
            j = json.load(f)
        shape = (os.path.basename(j["model"]), int(j["shape"]["L"]), int(j["shape"]["Hkv"]), int(j["shape"]["D"]),
                 None)
        lines, seen = [], set()
        for r in j["results"]:
            if r["strategy"] not in seen:
                seen.add(r["strategy"])
                style = r["strategy"].split(":")[0].split("+")[0].split(" ")[0]
                lines.append((r["strategy"], float(r["ratio"]), style))
        gpu = float(j["results"][0]["memory_bytes"]) / GIB
        weights = (float(j["weights_bytes"]) + float(j.get("reserve_bytes", 0))) / GIB
        return shape, lines, weights, gpu, int(j["batch"])
    except OSError as e:
        raise PlotError(f"--capacity {path}: {e.strerror}") from None
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise PlotError(f"--capacity {path}: not the JSON of kvsim capacity --json ({type(e).__name__}: {e})") from None


def _is_even_pow2(v):
    e = math.log2(v) if v > 0 else 0.5
    return abs(e - round(e)) < 1e-6 and round(e) % 2 == 0


def tokens_str(t):
    if t >= 2 ** 20:
        return f"{t / 2 ** 20:.3g}M"
    if t >= 2 ** 10:
        return f"{t / 2 ** 10:.3g}K"
    return f"{t:.0f}"


def weights_gib_of(shape, minus_weights, weights_gib):
    if weights_gib is not None:
        return weights_gib
    if not minus_weights:
        return 0.0
    if shape[4] is None:
        raise PlotError(f"--minus-weights needs a named --shape (or give --weights-gib) for {shape[0]}")
    return shape[4] * 1e9 * 2 / GIB
