"""Prefix-cache hit rate against cache capacity, one line per codec, from `kvsim prefix --json` output:
each result object's capacity_bytes and token_hit_rate (or request_hit_rate). A codec that stores fewer
bytes per token holds more tokens in the same capacity, so its curve sits to the left."""
import json

from matplotlib.ticker import FuncFormatter

from kvsim_store import PlotError
from kvsim_style import percent, strategy_style, wrap_spec

HIT_KEYS = {"token": "token_hit_rate", "request": "request_hit_rate"}


def load_results(paths):
    """(workload description, {codec: [(capacity_bytes, result), ...] sorted by capacity}) from the files."""
    by_codec, workloads = {}, []
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                doc = json.load(f)
        except OSError as e:
            raise PlotError(f"--prefix-json {p}: cannot read ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise PlotError(f"--prefix-json {p}: not JSON ({e.msg} at line {e.lineno})") from None
        results = doc.get("results") if isinstance(doc, dict) else None
        if not isinstance(results, list) or not results:
            raise PlotError(f"--prefix-json {p}: no \"results\" list (expected `kvsim prefix --json` output)")
        for i, r in enumerate(results):
            for key in ("codec", "capacity_bytes", "token_hit_rate", "request_hit_rate"):
                if not isinstance(r, dict) or key not in r:
                    raise PlotError(f"--prefix-json {p}: results[{i}] has no \"{key}\"")
            by_codec.setdefault(r["codec"], []).append((float(r["capacity_bytes"]), r))
        workloads.append(str(doc.get("workload", p)))
    for v in by_codec.values():
        v.sort(key=lambda x: x[0])
    return ", ".join(dict.fromkeys(workloads)), by_codec


def bytes_str(b):
    for unit, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if b >= scale:
            return f"{b / scale:.4g} {unit}"
    return f"{b:.4g} B"


def _style_name(codec):
    return "full" if codec in ("fp16", "identity") else codec


def draw_prefix(ax, workload, by_codec, hit="token"):
    """Returns (legend handles, table rows)."""
    key = HIT_KEYS[hit]
    rows, handles = [], []
    positive = [c for v in by_codec.values() for c, _ in v if c > 0]
    log_x = len(positive) >= 2 and max(positive) / min(positive) >= 8
    for codec, pts in by_codec.items():
        st = strategy_style(_style_name(codec))
        xs = [c for c, _ in pts if (c > 0 or not log_x)]
        ys = [r[key] for c, r in pts if (c > 0 or not log_x)]
        bpt = pts[0][1].get("bytes_per_token")
        label = codec + (f" ({bytes_str(bpt)}/token)" if bpt is not None else "")
        (h,) = ax.plot(xs, ys, color=st["color"], ls=st["linestyle"], marker=st["marker"], mfc=st["mfc"],
                       mec=st["mec"], ms=3.5, lw=1.2, label=label)
        handles.append(h)
        for c, r in pts:
            rows.append({"codec": codec, "capacity_bytes": c, "bytes_per_token": bpt,
                         "token_hit_rate": r["token_hit_rate"], "request_hit_rate": r["request_hit_rate"],
                         "prefill_tokens_saved": r.get("prefill_tokens_saved"),
                         "evictions_ttl": r.get("evictions_ttl"), "evictions_lru": r.get("evictions_lru")})
    if log_x:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: bytes_str(v) if v > 0 else "0"))
    ax.tick_params(axis="x", labelrotation=30, labelsize=6)
    ax.yaxis.set_major_formatter(FuncFormatter(percent))
    ax.set_ylim(0, max(0.05, min(1.0, 1.1 * max(r[key] for v in by_codec.values() for _, r in v))))
    ax.set_xlabel("prefix-cache capacity" + (" (log scale)" if log_x else ""))
    ax.set_ylabel(f"{hit} hit rate")
    ax.set_title("prefix cache, " + wrap_spec(workload, 40), fontsize=6.5)
    ax.grid(True, lw=0.3, alpha=0.5)
    return handles, rows


def check_hit(hit):
    if hit not in HIT_KEYS:
        raise PlotError(f"--hit {hit}: choose token or request")
    return hit
