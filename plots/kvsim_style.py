"""One look for every kvsim figure: Okabe-Ito colours (colour-blind safe), a fixed colour and marker
per strategy, fixed figure sizes (paper column width 3.5 in, two columns 7 in), PNG and PDF output.

A strategy keeps its colour in every figure. Eviction strategies use circles, merging squares,
sketches diamonds, pure quantization codecs triangles; a composition such as `h2o+kivi` keeps the
colour and marker of `h2o` with hollow markers and the line style of its codec.
"""
import os
import tempfile

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "grey": "#999999",
}
_C = OKABE_ITO

# name: (colour, marker). Order is the legend order.
STRATEGY_STYLE = {
    "full": (_C["black"], "o"),
    "window": (_C["grey"], "o"),
    "streaming": (_C["sky"], "o"),
    "h2o": (_C["vermillion"], "o"),
    "tova": (_C["green"], "o"),
    "scissorhands": (_C["purple"], "o"),
    "snapkv": (_C["blue"], "o"),
    "pyramidkv": (_C["orange"], "o"),
    "knorm": (_C["yellow"], "o"),
    "random": (_C["grey"], "X"),
    "entropy_merge": (_C["green"], "s"),
    "cam": (_C["orange"], "s"),
    "kvmerger": (_C["purple"], "s"),
    "cms_topk": (_C["vermillion"], "D"),
    "cms_aggregate": (_C["blue"], "D"),
    "quant": (_C["black"], "^"),
    "kivi": (_C["sky"], "^"),
    "nf4": (_C["orange"], "^"),
    # selectors (protocol sparse)
    "oracle_topk": (_C["black"], "*"),
    "quest": (_C["blue"], "v"),
    "sparq": (_C["green"], "v"),
    "magicpig": (_C["purple"], "v"),
    "rocketkv": (_C["orange"], "v"),
    "shadowkv": (_C["sky"], "v"),
    "pqcache": (_C["vermillion"], "v"),
}
CODECS = ("quant", "kivi", "nf4")
CODEC_LINESTYLE = {None: "-", "kivi": "--", "quant": ":", "nf4": "-."}
_SPARE = [_C["blue"], _C["vermillion"], _C["green"], _C["purple"], _C["orange"], _C["sky"]]

# Default figure sizes in inches (width, height). Tests check PNG sizes against these times the dpi.
SIZES = {
    "pareto": (3.5, 3.4),
    "compare": (7.0, 3.0),
    "compare1": (3.5, 3.0),
    "heatmap": (3.5, 2.8),
    "position": (3.5, 3.4),
    "trace": (7.0, 5.6),
    "memory": (3.5, 3.6),
    "prefix": (3.5, 3.2),
    "report": (7.0, 9.0),
}
DEFAULT_DPI = 300
SEQUENTIAL_CMAP = "viridis"  # perceptually uniform and colour-blind safe


def split_protocol(name):
    """'h2o (prefill)' -> ('h2o', 'prefill'); 'h2o' -> ('h2o', None) (labels of kvsim_store.protocol_label)."""
    if name.endswith(")") and " (" in name:
        base, proto = name[:-1].rsplit(" (", 1)
        return base, proto
    return name, None


def split_strategy(name):
    """'h2o+kivi' -> ('h2o', 'kivi'); 'kivi' -> ('kivi', None); 'h2o' -> ('h2o', None); a protocol suffix
    'h2o+kivi (prefill)' is dropped."""
    parts = split_protocol(name)[0].split("+")
    base = parts[0]
    codec = parts[-1] if len(parts) > 1 and parts[-1] in CODECS else None
    return base, codec


def strategy_style(name):
    """dict(color, marker, linestyle, mfc) for a strategy name; unknown names get a stable spare colour."""
    base, codec = split_strategy(name)
    if base in STRATEGY_STYLE:
        colour, marker = STRATEGY_STYLE[base]
    else:
        colour, marker = _SPARE[sum(map(ord, base)) % len(_SPARE)], "v"
    # The same strategy under protocol prefill (compress once, grow): its colour, a filled plus.
    prefill = split_protocol(name)[1] == "prefill"
    return {
        "color": colour,
        "marker": "P" if prefill else marker,
        "linestyle": CODEC_LINESTYLE.get(codec, "-"),
        "mfc": "white" if codec else colour,
        "mec": "black" if colour == _C["yellow"] else colour,
    }


def strategy_order(names):
    """Stable legend order: known strategies in table order (compositions after their base), then others."""
    known = list(STRATEGY_STYLE)

    def key(n):
        base, codec = split_strategy(n)
        return (known.index(base) if base in known else len(known), base, codec or "", split_protocol(n)[1] or "", n)

    return sorted(set(names), key=key)


def setup_matplotlib():
    """Headless backend, writable cache and the house style. Returns pyplot."""
    cfg = os.environ.get("MPLCONFIGDIR") or os.path.join(os.path.expanduser("~"), ".config", "matplotlib")
    if not _writable(cfg):
        os.environ["MPLCONFIGDIR"] = os.path.join(tempfile.gettempdir(), "kvsim-mplconfig")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "font.size": 8,
        "axes.titlesize": 8,
        "axes.labelsize": 8,
        "xtick.labelsize": 7,
        "ytick.labelsize": 7,
        "legend.fontsize": 7,
        "legend.frameon": False,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.color": "#dddddd",
        "grid.linewidth": 0.5,
        "lines.linewidth": 1.2,
        "lines.markersize": 4,
        "figure.dpi": 100,
        "savefig.dpi": DEFAULT_DPI,
        "pdf.fonttype": 42,  # embed TrueType: text stays text in the PDF (journals ask for this)
        "ps.fonttype": 42,
        "image.cmap": SEQUENTIAL_CMAP,
        "figure.constrained_layout.use": True,
    })
    return plt


def _writable(path):
    try:
        os.makedirs(path, exist_ok=True)
        return os.access(path, os.W_OK)
    except OSError:
        return False


def new_figure(kind, size=None, **kw):
    import matplotlib.pyplot as plt

    return plt.figure(figsize=size or SIZES[kind], **kw)


def synthetic_note(fig, synthetic):
    """Marks figures made from synthetic traces, which are never fidelity claims."""
    if synthetic:
        strip = 0.11 / fig.get_figheight()  # a strip along the bottom edge, kept free by the layout engine
        eng = fig.get_layout_engine()
        if eng is not None and hasattr(eng, "set"):
            eng.set(rect=(0, strip, 1, 1 - strip))
        fig.text(0.995, 0.002, "synthetic data: not for fidelity claims", ha="right", va="bottom", fontsize=5.5,
                 color="#777777", style="italic")


def save(fig, out_dir, stem, formats, dpi):
    """Writes OUT_DIR/STEM.{png,pdf} at the figure's own size (no tight bbox: sizes stay predictable)."""
    paths = []
    os.makedirs(out_dir, exist_ok=True)
    for fmt in formats:
        p = os.path.join(out_dir, f"{stem}.{fmt}")
        fig.savefig(p, dpi=dpi, format=fmt)
        paths.append(p)
    return paths


def percent(x, _pos=None):
    """Tick formatter for memory ratios: 0.125 -> '12.5%'."""
    v = 100.0 * x
    return f"{v:.3g}%" if v >= 10 else f"{v:.2g}%"


def wrap_spec(spec, width=48):
    """A long canonical spec split after commas into lines of at most width characters."""
    lines, cur = [], ""
    for part in spec.replace(":", ": ", 1).split(","):
        piece = part if not cur else "," + part
        if cur and len(cur) + len(piece) > width:
            lines.append(cur + ",")
            cur = part
        else:
            cur += piece
    return "\n".join(lines + [cur])


def short_model(name):
    """A model recorded from a file path is named by the file: '../m/stories260K.bin' -> 'stories260K'."""
    if "/" not in name:
        return name
    base = os.path.basename(name.rstrip("/"))
    return os.path.splitext(base)[0] or name
