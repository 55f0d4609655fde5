"""Trace analysis straight from a trace file (traces/FORMAT.md): attention-sink mass per layer and head,
the distribution of attention entropy, heavy-hitter concentration and key channel magnitudes.

Attention is recomputed from q and k with numpy (causal, logits scaled by 1/sqrt(D)) for a subsample of
query steps, so a llama3-8b layer of 4096 tokens takes well under a second."""
import os

import numpy as np

from kvsim_store import PlotError
from kvsim_style import short_model

# Fractions of a row's keys (kept by attention, largest first) at which concentration is read.
KEEP_FRACS = np.array([0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0])


def open_trace(path):
    import h5py

    if not os.path.exists(path):
        raise PlotError(f"{path}: no such trace")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise PlotError(f"{path}: not an HDF5 trace ({str(e).splitlines()[0]})") from None
    a = f.attrs
    fmt = a.get("format")
    fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    if fmt != "kvtrace":
        raise PlotError(f"{path}: format = {fmt!r}, expected 'kvtrace'")
    if int(a.get("format_version", -1)) != 1:
        raise PlotError(f"{path}: format_version = {a.get('format_version')}, this kvsim reads version 1")
    if int(a.get("complete", 0)) != 1:
        raise PlotError(f"{path}: complete = {a.get('complete')}: an unfinished trace")
    if "sequences" not in f or len(f["sequences"]) == 0:
        raise PlotError(f"{path}: no sequences")
    return f


def analyse(path, sequences=None, steps=48, sinks=4, seed=0):
    """Statistics over the sampled query steps of the chosen sequences (all by default)."""
    f = open_trace(path)
    with f:
        a = f.attrs
        L, H, Hkv, D = (int(a[k]) for k in ("n_layers", "n_heads", "n_kv_heads", "head_dim"))
        G = H // Hkv
        names = sorted(f["sequences"])
        if sequences:
            missing = [s for s in sequences if s not in names]
            if missing:
                raise PlotError(f"{path}: no sequence {missing[0]} (have {', '.join(names)})")
            names = [s for s in names if s in sequences]
        model = a.get("model", "")
        model = short_model(model.decode() if isinstance(model, bytes) else str(model))
        out = {"L": L, "H": H, "Hkv": Hkv, "D": D, "model": model, "synthetic": bool(int(a.get("synthetic", 0))),
               "sequences": names, "sinks": sinks,
               "sink": np.zeros((L, H)), "entropy": [[] for _ in range(L)], "concentration": np.zeros((L, len(KEEP_FRACS))),
               "kmag": np.zeros((L, Hkv, D)), "steps": 0, "tokens": 0}
        rng = np.random.default_rng(seed)
        for name in names:
            seq = f["sequences"][name]
            T = int(seq.attrs["n_tokens"])
            lo = min(T - 1, max(sinks + 1, 8))
            idx = np.unique(np.linspace(lo, T - 1, min(steps, T - lo)).astype(int))
            if len(idx) > 2:  # jitter inside the grid so that periodic structure does not alias
                idx = np.unique(np.clip(idx + rng.integers(-1, 2, len(idx)), lo, T - 1))
            out["steps"] += len(idx)
            out["tokens"] += T
            for l in range(L):
                grp = seq["layers"][str(l)]
                q = grp["q"].astype(np.float32)[:, idx, :]  # [H, S, D]
                k = grp["k"].astype(np.float32)[...]  # [Hkv, T, D]
                _layer_stats(out, l, q, k, idx, G, D, sinks)
        S = out["steps"]
        out["sink"] /= S
        out["concentration"] /= S * H
        out["kmag"] /= len(names)
        out["entropy"] = [np.concatenate(e) for e in out["entropy"]]
    return out


def _layer_stats(out, l, q, k, idx, G, D, sinks):
    T = k.shape[1]
    causal = np.arange(T)[None, :] <= idx[:, None]  # [S, T]
    n = idx + 1.0
    for g in range(k.shape[0]):
        z = q[g * G:(g + 1) * G] @ k[g].T / np.sqrt(D)  # [G, S, T]
        z = np.where(causal[None], z, -np.inf)
        z -= z.max(axis=2, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=2, keepdims=True)
        out["sink"][l, g * G:(g + 1) * G] += p[:, :, :sinks].sum(axis=2).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=2) / np.log(np.maximum(n, 2.0))[None, :]
        out["entropy"][l].append(ent.ravel())
        srt = -np.sort(-p, axis=2)  # rows descending; masked entries (0) sort last
        cum = np.cumsum(srt, axis=2)
        kth = np.clip(np.ceil(KEEP_FRACS[None, :] * n[:, None]).astype(int) - 1, 0, T - 1)  # [S, F]
        out["concentration"][l] += np.take_along_axis(cum, np.broadcast_to(kth, (G,) + kth.shape), axis=2).sum(axis=(0, 1))
    out["kmag"][l] += np.abs(k).mean(axis=1)


def draw_sink(fig, ax, st):
    L, H = st["L"], st["H"]
    im = ax.imshow(st["sink"], aspect="auto", vmin=0, vmax=max(1e-9, st["sink"].max()), interpolation="nearest")
    cb = fig.colorbar(im, ax=ax, shrink=0.95, pad=0.02)
    cb.set_label(f"mass on first {st['sinks']} tokens", fontsize=7)
    cb.ax.tick_params(labelsize=6)
    if L <= 16 and H <= 16:
        hi = st["sink"].max()
        for l in range(L):
            for h in range(H):
                v = st["sink"][l, h]
                ax.text(h, l, f"{v:.2f}", ha="center", va="center", fontsize=5,
                        color="black" if v > 0.5 * hi else "white")
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(0, H, 1 if H <= 16 else 4))
    ax.set_yticks(range(0, L, 1 if L <= 16 else 4))
    ax.grid(False)
    ax.set_title("attention-sink mass", fontsize=8)


def draw_entropy(ax, st):
    L = st["L"]
    data = st["entropy"]
    stride = 1 if L <= 16 else 2
    layers = list(range(0, L, stride))
    bp = ax.boxplot([data[l] for l in layers], positions=layers, widths=0.6 * stride, whis=(5, 95),
                    showfliers=False, patch_artist=True, medianprops={"color": "black", "lw": 1})
    for b in bp["boxes"]:
        b.set_facecolor("#56B4E9")
        b.set_edgecolor("#0072B2")
    ax.set_xticks(layers[:: max(1, len(layers) // 8)])
    ax.set_xticklabels([str(l) for l in layers[:: max(1, len(layers) // 8)]])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer" + (" (every 2nd)" if stride > 1 else ""))
    ax.set_ylabel("normalized entropy H / log(t+1)")
    ax.set_title("attention entropy (box: p25–p75, whiskers: p5–p95)", fontsize=7)


def draw_concentration(fig, ax, st):
    import matplotlib as mpl

    L = st["L"]
    cmap = mpl.colormaps["viridis"]
    x = 100 * KEEP_FRACS
    for l in range(L):
        ax.plot(x, st["concentration"][l], color=cmap(l / max(1, L - 1)), lw=1.0,
                label=f"layer {l}" if L <= 6 else None)
    ax.plot(x, KEEP_FRACS, color="#888888", ls=":", lw=1, label="uniform")
    ax.set_xscale("log")
    ax.set_xlim(x[0], 100)
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda v, _p: f"{v:g}%"))
    ax.set_xlabel("keys kept, largest attention first (% of t+1)")
    ax.set_ylabel("attention mass captured")
    ax.set_title("heavy-hitter concentration", fontsize=8)
    if L <= 6:
        ax.legend(loc="lower right", fontsize=6)
    else:
        sm = mpl.cm.ScalarMappable(cmap=cmap, norm=mpl.colors.Normalize(0, L - 1))
        cb = fig.colorbar(sm, ax=ax, shrink=0.95, pad=0.02)
        cb.set_label("layer", fontsize=7)
        cb.ax.tick_params(labelsize=6)


def draw_kmag(fig, ax, st):
    """Mean |k| per channel relative to the median channel of its (layer, KV head): outlier channels stand out."""
    L, Hkv, D = st["L"], st["Hkv"], st["D"]
    m = st["kmag"].reshape(L * Hkv, D)
    rel = m / np.maximum(np.median(m, axis=1, keepdims=True), 1e-12)
    im = ax.imshow(rel, aspect="auto", interpolation="nearest", cmap="magma", vmin=0, vmax=max(rel.max(), 2.0))
    cb = fig.colorbar(im, ax=ax, shrink=0.95, pad=0.02)
    cb.set_label("mean |k| / row median", fontsize=7)
    cb.ax.tick_params(labelsize=6)
    n_out = int((rel > 4).sum())
    ax.set_xlabel("key channel")
    ax.set_ylabel(f"layer × KV head ({Hkv} per layer)")
    step = max(1, L // 8)
    ax.set_yticks([l * Hkv for l in range(0, L, step)])
    ax.set_yticklabels([f"L{l}" for l in range(0, L, step)])
    for l in range(1, L):
        ax.axhline(l * Hkv - 0.5, color="white", lw=0.4)
    ax.grid(False)
    ax.set_title(f"key channel magnitude: {n_out} of {L * Hkv * D} channels > 4× median", fontsize=7)


def draw_trace_figure(fig, st):
    axs = fig.subplots(2, 2)
    draw_sink(fig, axs[0, 0], st)
    draw_entropy(axs[0, 1], st)
    draw_concentration(fig, axs[1, 0], st)
    draw_kmag(fig, axs[1, 1], st)
    shape = f"L={st['L']} H={st['H']} Hkv={st['Hkv']} D={st['D']}"
    fig.suptitle(f"{st['model']} ({shape}): {len(st['sequences'])} sequence{'s' if len(st['sequences']) != 1 else ''}, {st['tokens']} tokens, "
                 f"{st['steps']} sampled query steps", fontsize=8)
