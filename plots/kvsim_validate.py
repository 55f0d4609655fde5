"""kvsim validate: do the offline attention metrics rank cache configurations the way live quality does?

For each text: `kvsim record` records it (continued greedily to `tokens`), `kvsim run` replays every
configuration offline (per-step curves, per-head summaries; the runs are committed to DIR/validate.db),
and `kvsim ppl --per-token` runs the same configurations live on the trace's own token ids with the same
prefill and protocol (the same instance driver). The report correlates each offline metric with Δppl
(live perplexity minus the full cache's): Pearson, Spearman and Kendall (tau-b), overall and per family,
with bootstrap confidence intervals over (text, position) pairs; the same for key-token Δppl (LongPPL's
key tokens: configs/validate.yaml says how they are chosen), for per-head tails (p95 and worst over heads),
and the live greedy agreement. Outputs in DIR: report.md, validate.png/.pdf, validate.db (the offline
store), offline.json and live.json (every number the report uses), correlations.json.

Run through `kvsim validate` (which passes --kvsim); see `kvsim validate --help`.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.dont_write_bytecode = True

# Offline metrics, oriented so that larger means more distortion (name, summary key, transform).
METRICS = [
    ("kl", "kl", lambda x: x),
    ("out_rel_l2", "out_rel_l2", lambda x: x),
    ("tv", "tv", lambda x: x),
    ("1-mass", "mass", lambda x: 1.0 - x),
    ("1-out_cos", "out_cos", lambda x: 1.0 - x),
    ("1-topk8_recall", "topk8_recall", lambda x: 1.0 - x),
    ("1-topk32_recall", "topk32_recall", lambda x: 1.0 - x),
    ("logit_rel_err", "logit_rel_err", lambda x: x),
    ("k_rel_err", "k_rel_err", lambda x: x),
    ("v_rel_err", "v_rel_err", lambda x: x),
]
EVICTION = {"full", "window", "streaming", "h2o", "tova", "scissorhands", "snapkv", "pyramidkv", "knorm", "random"}
MERGING = {"entropy_merge", "cam", "kvmerger"}
SKETCHES = {"cms_topk", "cms_aggregate"}
CODECS = {"quant", "kivi", "nf4"}
FAMILIES = ["eviction", "merging", "sketches", "codecs", "compositions", "selectors"]


class ValidateError(Exception):
    pass


def family(spec, protocol):
    if protocol == "sparse":
        return "selectors"
    if "+" in spec:
        return "compositions"
    name = spec.split(":")[0]
    for fam, names in (("eviction", EVICTION), ("merging", MERGING), ("sketches", SKETCHES), ("codecs", CODECS)):
        if name in names:
            return fam
    return "other"


# --- statistics (numpy only; the test recomputes them with scipy) ------------------------------------


def ranks(x):
    """Ranks 1..n, ties get the mean of their ranks."""
    import numpy as np

    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        r[tie] = r[tie].mean()
    return r


def pearson(x, y):
    import numpy as np

    x, y = np.asarray(x, float) - np.mean(x), np.asarray(y, float) - np.mean(y)
    d = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / d) if d > 0 else float("nan")


def spearman(x, y):
    return pearson(ranks(x), ranks(y))


def kendall(x, y):
    """Kendall's tau-b: (concordant − discordant) / sqrt((n0 − ties_x)(n0 − ties_y)) over all pairs."""
    import numpy as np

    x, y = np.asarray(x, float), np.asarray(y, float)
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(len(x), 1)
    s = (dx * dy)[iu].sum()
    nx, ny = (dx[iu] != 0).sum(), (dy[iu] != 0).sum()
    return float(s / np.sqrt(nx * ny)) if nx > 0 and ny > 0 else float("nan")


CORRELATIONS = {"pearson": pearson, "spearman": spearman, "kendall": kendall}


def key_tokens(nll_full, nll_short, alpha, beta):
    """LongPPL's rule per predicted token: long-short difference nll_short − nll_full > alpha and long-context
    log-likelihood −nll_full > beta. NaN (no short-context score) is never a key token. Returns a bool mask."""
    import numpy as np

    f, s = np.asarray(nll_full, float), np.asarray(nll_short, float)
    with np.errstate(invalid="ignore"):
        return (s - f > alpha) & (-f > beta) & np.isfinite(s)


# --- running kvsim ------------------------------------------------------------------------------------


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        msg = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        raise ValidateError(f"{os.path.basename(cmd[0])} {cmd[1]}: {msg}")
    return r.stdout


def load_config(path):
    import yaml

    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except OSError as e:
        raise ValidateError(f"--config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ValidateError(f"--config {path}: not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("configs"), dict) or not cfg["configs"]:
        raise ValidateError(f"--config {path}: needs a 'configs' map of protocol -> list of strategy specs")
    for proto, specs in cfg["configs"].items():
        if proto not in ("evict", "prefill", "sparse"):
            raise ValidateError(f"--config {path}: unknown protocol '{proto}' (evict, prefill, sparse)")
        if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs) or not specs:
            raise ValidateError(f"--config {path}: configs.{proto} must be a non-empty list of strategy specs")
    kt = cfg.get("key_tokens", {})
    cfg["key_tokens"] = {"short": int(kt.get("short", 32)), "stride": int(kt.get("stride", 32)),
                         "alpha": float(kt.get("alpha", 2.0)), "beta": float(kt.get("beta", -2.0))}
    cfg["tokens"] = int(cfg.get("tokens", 320))
    cfg["prefill"] = int(cfg.get("prefill", 64))
    if not 1 <= cfg["prefill"] < cfg["tokens"] - 1:
        raise ValidateError(f"--config {path}: prefill {cfg['prefill']} must satisfy 1 <= prefill < tokens - 1 "
                            f"= {cfg['tokens'] - 1}")
    if cfg["key_tokens"]["short"] < 1 or cfg["key_tokens"]["stride"] < 1:
        raise ValidateError(f"--config {path}: key_tokens.short and .stride must be >= 1")
    return cfg


def record(a, cfg, texts, d):
    """One trace of every text continued greedily to cfg['tokens'] tokens; returns (trace, {name: ids})."""
    import h5py

    lines = []
    for t in texts:
        name = os.path.splitext(os.path.basename(t))[0]
        try:
            with open(t) as f:
                text = f.read().strip()
        except OSError as e:
            raise ValidateError(f"--text {t}: {e.strerror}") from None
        if not text:
            raise ValidateError(f"--text {t}: empty")
        lines.append({"name": name, "prompt": text, "source": os.path.relpath(t, ROOT)})
    if len({x["name"] for x in lines}) != len(lines):
        raise ValidateError("--text: two texts with the same file name")
    # The prompts' token counts first, then each continued to exactly `tokens`.
    probe = os.path.join(d, "probe.h5")
    jl = os.path.join(d, "texts.jsonl")
    with open(jl, "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in lines)
    tok = ["--tokenizer", a.tokenizer] if a.tokenizer else []
    run([a.kvsim, "record", "--model", a.model, *tok, "--prompts", jl, "--out", probe, "--quiet", "--force"])
    with h5py.File(probe, "r") as f:
        n = {s: int(f["sequences"][s].attrs["n_tokens"]) for s in f["sequences"]}
    for x in lines:
        if n[x["name"]] > cfg["tokens"]:
            raise ValidateError(f"text '{x['name']}': {n[x['name']]} tokens, more than tokens = {cfg['tokens']}")
        if n[x["name"]] < cfg["prefill"]:
            print(f"kvsim validate: text '{x['name']}' ({n[x['name']]} tokens) is shorter than the prefill "
                  f"{cfg['prefill']}: the prompt ends in generated text", file=sys.stderr)
        x["generate"] = cfg["tokens"] - n[x["name"]]
    with open(jl, "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in lines)
    trace = os.path.join(a.out, "texts.h5")
    run([a.kvsim, "record", "--model", a.model, *tok, "--prompts", jl, "--out", trace, "--quiet", "--force"])
    with h5py.File(trace, "r") as f:
        ids = {s: [int(v) for v in f["sequences"][s]["tokens"][()]] for s in f["sequences"]}
    return trace, ids


def offline(a, cfg, trace, seq, proto, specs):
    """Per spec: summary means, per-step curves [T − P] (bins = one step each) and per-head means."""
    T, P = cfg["tokens"], cfg["prefill"]
    common = [a.kvsim, "run", "--trace", trace, "--sequence", seq, "--prefill", str(P), "--protocol", proto,
              "--stats-cache", "off", "--quiet", "--backend", a.backend]
    strat = sum((["--strategy", s] for s in specs), [])
    j = json.loads(run(common + strat + ["--json", "--per-head", "--bins", str(T - P)]))
    run(common + strat + ["--db", a.db])  # the store (default bins), committed per run
    out = {}
    for r, spec in zip(j["results"], specs):
        out[spec] = {
            "summary": {m: r["summary"][m]["mean"] for m in r["summary"]},
            "curves": {m: r["curves"][m] for m in r["curves"]},
            "heads": {m: [h[m]["mean"] for h in r["heads"]] for m in r["summary"]},
        }
    return out


def live(a, cfg, ids, proto, specs):
    P = cfg["prefill"]
    cmd = [a.kvsim, "ppl", "--model", a.model, "--ids", " ".join(map(str, ids)), "--prefill", str(P),
           "--protocol", proto, "--json", "--per-token", "--quiet", "--backend", "cpu"]
    j = json.loads(run(cmd + sum((["--strategy", s] for s in specs), [])))
    by = {}
    for r in j["results"]:
        by[r["spec"]] = {k: r[k] for k in ("ppl", "delta_ppl", "nll", "ratio", "greedy_agreement",
                                           "first_divergence", "token_nll", "argmax")}
    return by


def short_context_nll(a, cfg, ids):
    """nll of each predicted token x_t (t = P..T−1) with its context truncated as LongPPL does: windows
    of `short` tokens, advanced by `stride`; each window's tokens short..short+stride−1 are scored with the
    window's start as their first context token (positions restart at 0, no BOS added). NaN where t < short."""
    import numpy as np

    kt = cfg["key_tokens"]
    T, P, short, stride = len(ids), cfg["prefill"], kt["short"], kt["stride"]
    out = np.full(T - P, np.nan)
    for s in range(0, max(0, T - short), stride):
        end = min(s + short + stride, T)
        if end - s <= short or end <= P:
            continue
        piece = ids[s:end]
        cmd = [a.kvsim, "ppl", "--model", a.model, "--ids", " ".join(map(str, piece)), "--prefill", str(short),
               "--json", "--per-token", "--quiet", "--backend", "cpu"]
        nll = json.loads(run(cmd))["results"][0]["token_nll"]
        for i, v in enumerate(nll):
            t = s + short + i
            if t >= P:
                out[t - P] = v
    return out


# --- analysis ----------------------------------------------------------------------------------------


def metric_value(entry, key, transform, weights=None, curve_steps=None):
    """The offline metric of one (spec, text): its summary mean, or the mean of its per-step curve at the
    steps of the chosen positions (weights)."""
    import numpy as np

    if weights is None:
        return transform(entry["summary"][key])
    c = np.array([np.nan if v is None else v for v in entry["curves"][key]], float)
    w = np.asarray(weights, float)
    if w.sum() == 0:
        return float("nan")
    return transform(float(np.nansum(c * w) / w[np.isfinite(c)].sum()))


def analyse(cfg, texts, off, liv, short_nll, n_boot, seed):
    """Every number of the report. off[text][(proto, spec)], liv[text][(proto, spec)], short_nll[text]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    P = cfg["prefill"]
    kt = cfg["key_tokens"]
    configs = [(p, s) for p, specs in cfg["configs"].items() for s in specs]
    names = list(texts)
    full = {t: np.array(liv[t]["full"]["token_nll"]) for t in names}
    # key tokens per text (predicted positions t = P..T−1); the step that predicts x_t is t − 1, so the
    # offline per-step curve (steps P..T−1) weighs step t − 1 for a key token at t (t = P has no step).
    keys = {t: key_tokens(full[t], short_nll[t], kt["alpha"], kt["beta"]) for t in names}
    step_w = {}
    for t in names:
        n = len(full[t])
        w = np.zeros(n)
        for i in np.nonzero(keys[t])[0]:
            if i >= 1:
                w[i - 1] = 1.0
        step_w[t] = w
    rows = []
    for proto, spec in configs:
        row = {"protocol": proto, "spec": spec, "family": family(spec, proto)}
        nll = {t: np.array(liv[t][(proto, spec)]["token_nll"]) for t in names}
        row["nll"] = nll
        row["dppl"] = float(np.mean([np.exp(nll[t].mean()) - np.exp(full[t].mean()) for t in names]))
        kn = np.concatenate([nll[t][keys[t]] for t in names])
        kf = np.concatenate([full[t][keys[t]] for t in names])
        row["key_dppl"] = float(np.exp(kn.mean()) - np.exp(kf.mean())) if len(kn) else float("nan")
        row["agree"] = float(np.mean([liv[t][(proto, spec)]["greedy_agreement"] for t in names]))
        fd = [liv[t][(proto, spec)]["first_divergence"] for t in names]
        row["first_divergence"] = min((x for x in fd if x is not None), default=None)
        row["ratio"] = float(np.mean([off[t][(proto, spec)]["summary"]["ratio"] for t in names]))
        row["read_ratio"] = float(np.mean([off[t][(proto, spec)]["summary"].get("read_ratio", np.nan)
                                           for t in names]))
        for m, key, f in METRICS:
            row[m] = float(np.mean([metric_value(off[t][(proto, spec)], key, f) for t in names]))
            row["key:" + m] = float(np.nanmean([metric_value(off[t][(proto, spec)], key, f, step_w[t])
                                                for t in names])) if any(step_w[t].sum() for t in names) \
                else float("nan")
            heads = np.concatenate([f(np.asarray(off[t][(proto, spec)]["heads"][key], float)) for t in names])
            row["p95:" + m] = float(np.percentile(heads, 95))
            row["worst:" + m] = float(heads.max())
        rows.append(row)
    cfg_rows = rows

    def corr_table(xkey, ykey, subset):
        out = {}
        for name, fn in CORRELATIONS.items():
            x = [r[xkey] for r in subset]
            y = [r[ykey] for r in subset]
            ok = np.isfinite(x) & np.isfinite(y)
            out[name] = fn(np.asarray(x)[ok], np.asarray(y)[ok]) if ok.sum() >= 3 else float("nan")
        return out

    def bootstrap(xkey, subset, n):
        """95% intervals of the three correlations of metric xkey with Δppl, resampling (text, position)
        pairs with replacement: each resample recomputes every configuration's Δppl from its token nlls and
        its offline metric from its per-step curve at the resampled positions' steps (position i is
        predicted by the logits of step i − 1, so positions from P + 1 on). Weights w = how often each pair
        was drawn; every sum below is a product with w."""
        if n <= 0 or len(subset) < 3:
            return {}
        m = next(x for x in METRICS if x[0] == xkey)
        nll = np.stack([np.concatenate([r["nll"][t][1:] for t in names]) for r in subset])  # [configs, pairs]
        fnll = np.concatenate([full[t][1:] for t in names])
        curve = np.stack([np.concatenate([np.array([np.nan if v is None else v for v in
                                                    off[t][(r["protocol"], r["spec"])]["curves"][m[1]]],
                                                   float)[:-1] for t in names]) for r in subset])
        finite = np.isfinite(curve)
        curve0 = np.where(finite, curve, 0.0)
        stats = {k: [] for k in CORRELATIONS}
        n_pairs = nll.shape[1]
        for _ in range(n):
            w = np.bincount(rng.integers(0, n_pairs, n_pairs), minlength=n_pairs).astype(float)
            ys = np.exp(nll @ w / w.sum()) - np.exp(fnll @ w / w.sum())
            xs = m[2]((curve0 @ w) / (finite.astype(float) @ w))  # the transforms are affine
            for k, fn in CORRELATIONS.items():
                stats[k].append(fn(xs, ys))
        return {k: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))] for k, v in stats.items()}

    corr = {"overall": {}, "key_tokens": {}, "tails": {}, "agreement": {}, "families": {}}
    for m, _, _ in METRICS:
        corr["overall"][m] = corr_table(m, "dppl", cfg_rows)
        corr["overall"][m]["ci95"] = bootstrap(m, cfg_rows, n_boot)
        corr["key_tokens"][m] = corr_table("key:" + m, "key_dppl", cfg_rows)
        corr["tails"]["p95:" + m] = corr_table("p95:" + m, "dppl", cfg_rows)
        corr["tails"]["worst:" + m] = corr_table("worst:" + m, "dppl", cfg_rows)
        for r in cfg_rows:
            r["disagree"] = 1.0 - r["agree"]
        corr["agreement"][m] = corr_table(m, "disagree", cfg_rows)
    for fam in FAMILIES:
        sub = [r for r in cfg_rows if r["family"] == fam]
        corr["families"][fam] = {"n": len(sub)}
        for m, _, _ in METRICS:
            corr["families"][fam][m] = corr_table(m, "dppl", sub)
    n_keys = {t: int(keys[t].sum()) for t in names}
    return rows, corr, n_keys, {t: np.nonzero(keys[t])[0].tolist() for t in names}


# --- report ------------------------------------------------------------------------------------------


def fmt(x, spec="+.2f"):
    return "–" if x is None or x != x else format(x, spec)


def figure(rows, corr, path_stem, fmts):
    sys.path.insert(0, HERE)
    from kvsim_style import setup_matplotlib

    plt = setup_matplotlib()
    colours = {"eviction": "#0072B2", "merging": "#009E73", "sketches": "#CC79A7", "codecs": "#E69F00",
               "compositions": "#D55E00", "selectors": "#000000"}
    shown = ["kl", "out_rel_l2", "1-mass"]
    fig, axes = plt.subplots(1, 3, figsize=(7.0, 2.8), layout="none")
    pts = rows
    for ax, m in zip(axes, shown):
        for fam in FAMILIES:
            sub = [r for r in pts if r["family"] == fam]
            if not sub:
                continue
            ax.scatter([max(r[m], 1e-7) for r in sub], [r["dppl"] for r in sub], s=14, color=colours[fam],
                       label=fam, marker="o" if fam != "selectors" else "v", lw=0)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=0.05)
        ax.set_yticks([-1, -0.1, 0, 0.1, 1, 10])
        ax.set_yticklabels(["−1", "−0.1", "0", "0.1", "1", "10"])
        ax.set_xlabel(f"offline {m} (mean; 0 drawn at 1e-7)", fontsize=7)
        c = corr["overall"][m]
        ax.set_title(f"Spearman {fmt(c['spearman'])}, Kendall {fmt(c['kendall'])}", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0].set_ylabel("live Δppl (vs full; symlog)", fontsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=6.5, frameon=False)
    fig.subplots_adjust(left=0.08, right=0.99, top=0.9, bottom=0.3, wspace=0.3)
    out = []
    for f in fmts:
        p = f"{path_stem}.{f}"
        fig.savefig(p, dpi=200)
        out.append(p)
    plt.close(fig)
    return out


def write_report(a, cfg, texts, ids, rows, corr, n_keys, seconds, figs):
    P, T = cfg["prefill"], cfg["tokens"]
    kt = cfg["key_tokens"]
    n_cfg = len(rows)
    L = []
    L.append("# kvsim validate: do offline metrics predict live perplexity?\n")
    counts = ", ".join(f"{sum(1 for r in rows if r['family'] == f)} {f}" for f in FAMILIES)
    L.append(f"Model `{a.model}`; {len(texts)} texts ({', '.join(texts)}), each continued greedily to T = {T} "
             f"tokens, prefill P = {P}, {T - P} predicted tokens per text; {n_cfg} configurations ({counts}). "
             f"Δppl = live perplexity − the full cache's, mean over texts. Made by `kvsim validate` in "
             f"{seconds:.0f} s; the offline runs are in `validate.db`, every number in `offline.json`, "
             f"`live.json` and `correlations.json`.\n")
    L.append("Metrics are oriented so that larger means more distortion (1 − mass, 1 − out_cos, 1 − recall); a "
             "positive correlation means the offline metric ranks configurations as Δppl does. Intervals: 95% "
             f"bootstrap over (text, position) pairs ({a.bootstrap} resamples).\n")
    L.append("## All configurations\n")
    L.append("| offline metric | Pearson | Spearman | Kendall | Spearman 95% CI | Kendall 95% CI |")
    L.append("| --- | --- | --- | --- | --- | --- |")
    for m, _, _ in METRICS:
        c = corr["overall"][m]
        ci = c.get("ci95", {})
        sp = ci.get("spearman")
        kd = ci.get("kendall")
        L.append(f"| {m} | {fmt(c['pearson'])} | {fmt(c['spearman'])} | {fmt(c['kendall'])} | "
                 f"{'[' + fmt(sp[0]) + ', ' + fmt(sp[1]) + ']' if sp else '–'} | "
                 f"{'[' + fmt(kd[0]) + ', ' + fmt(kd[1]) + ']' if kd else '–'} |")
    L.append("")
    for f in figs:
        if f.endswith(".png"):
            L.append(f"![offline metric against live Δppl]({os.path.basename(f)})\n")
    L.append("## Per family (Spearman; n = configurations)\n")
    L.append("| family | n | " + " | ".join(m for m, _, _ in METRICS) + " |")
    L.append("| --- | --- | " + " | ".join("---" for _ in METRICS) + " |")
    for fam in FAMILIES:
        c = corr["families"][fam]
        L.append(f"| {fam} | {c['n']} | " + " | ".join(fmt(c[m]["spearman"]) for m, _, _ in METRICS) + " |")
    L.append("")
    L.append("## Key tokens (LongPPL)\n")
    L.append(f"A predicted token x_t is a key token when its nll with the context truncated to the last "
             f"{kt['short']} tokens (windows advanced by {kt['stride']}, as LongPPL's reference code does) "
             f"exceeds its full-context nll by more than α = {kt['alpha']} and its full-context log-likelihood "
             f"is above β = {kt['beta']} (Fang et al. 2024, arXiv 2410.23771; the paper truncates to 4096 of "
             f"32k tokens). Key tokens per text: "
             + ", ".join(f"{t} {n_keys[t]}" for t in texts) + f" of {T - P}. Key-token Δppl uses only them; "
             "the offline metric is its per-step curve at the steps that predict them.\n")
    L.append("| offline metric | Spearman (key-token Δppl) | Kendall | Spearman of the p95 head | of the worst head | "
             "Spearman with 1 − greedy agreement |")
    L.append("| --- | --- | --- | --- | --- | --- |")
    for m, _, _ in METRICS:
        k = corr["key_tokens"][m]
        L.append(f"| {m} | {fmt(k['spearman'])} | {fmt(k['kendall'])} | {fmt(corr['tails']['p95:' + m]['spearman'])}"
                 f" | {fmt(corr['tails']['worst:' + m]['spearman'])} | {fmt(corr['agreement'][m]['spearman'])} |")
    L.append("")
    L.append("## Every configuration\n")
    L.append("| protocol | configuration | family | ratio | read | kl | out_rel_l2 | mass | Δppl | key Δppl | "
             "agree | first div. |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in sorted(rows, key=lambda r: r["dppl"]):
        L.append(f"| {r['protocol']} | `{r['spec']}` | {r['family']} | {r['ratio']:.3f} | {fmt(r['read_ratio'], '.3f')} "
                 f"| {r['kl']:.3g} | {r['out_rel_l2']:.3g} | {1 - r['1-mass']:.3f} | {r['dppl']:+.3f} | "
                 f"{fmt(r['key_dppl'], '+.3f')} | {r['agree']:.3f} | "
                 f"{r['first_divergence'] if r['first_divergence'] is not None else '–'} |")
    L.append("")
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write("\n".join(L))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="kvsim validate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvsim", required=True, help=argparse.SUPPRESS)
    ap.add_argument("--model", required=True, help="llama2.c checkpoint (.bin) or Hugging Face directory")
    ap.add_argument("--tokenizer", help="tokenizer (default: next to the model)")
    ap.add_argument("--text", action="append", help="a text file (repeatable; default traces/samples/texts/*.txt)")
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "validate.yaml"),
                    help="configurations per protocol and the key-token rule (default configs/validate.yaml)")
    ap.add_argument("--protocol", action="append", choices=["evict", "prefill", "sparse"],
                    help="only the config's configurations under this protocol (repeatable)")
    ap.add_argument("--out", required=True, help="output folder (report.md, figures, validate.db, JSON)")
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals (0: none)")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument("--backend", default="auto", help="offline replay backend (ref, omp, auto)")
    ap.add_argument("--format", default="png,pdf", help="figure formats (comma-separated)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        t0 = time.time()
        cfg = load_config(a.config)
        if a.protocol:
            cfg["configs"] = {p: s for p, s in cfg["configs"].items() if p in a.protocol}
            if not cfg["configs"]:
                raise ValidateError(f"--protocol {', '.join(a.protocol)}: no configurations in {a.config}")
        texts = a.text or sorted(glob.glob(os.path.join(ROOT, "traces", "samples", "texts", "*.txt")))
        if not texts:
            raise ValidateError("no texts: give --text FILE")
        if not os.path.exists(a.model):
            raise ValidateError(f"--model {a.model}: no such file or directory")
        os.makedirs(a.out, exist_ok=True)
        a.db = os.path.join(a.out, "validate.db")
        if os.path.exists(a.db):
            os.remove(a.db)  # one validation per folder: a rerun replaces it
        # `full` is the reference of every Δppl (kvsim ppl runs it first in every call), not a configuration
        cfg["configs"] = {p: [s for s in specs if s != "full"] for p, specs in cfg["configs"].items()}
        with tempfile.TemporaryDirectory(prefix="kvsim-validate-") as d:
            trace, ids = record(a, cfg, texts, d)
        names = list(ids)
        off, liv, short = {}, {}, {}
        for t in names:
            off[t], liv[t] = {}, {}
            for proto, specs in cfg["configs"].items():
                o = offline(a, cfg, trace, t, proto, specs)
                lv = live(a, cfg, ids[t], proto, specs)
                for s in specs:
                    off[t][(proto, s)] = o[s]
                    liv[t][(proto, s)] = lv[s]
                liv[t]["full"] = lv["full"]
            short[t] = short_context_nll(a, cfg, ids[t])
            if not a.quiet:
                print(f"kvsim validate: {t} done ({time.time() - t0:.0f} s)", file=sys.stderr)
        rows, corr, n_keys, key_pos = analyse(cfg, names, off, liv, short, a.bootstrap, a.seed)
        seconds = time.time() - t0
        figs = figure(rows, corr, os.path.join(a.out, "validate"), [f for f in a.format.split(",") if f])
        write_report(a, cfg, names, ids, rows, corr, n_keys, seconds, figs)
        with open(os.path.join(a.out, "correlations.json"), "w") as f:
            json.dump(corr, f, indent=1)
        with open(os.path.join(a.out, "live.json"), "w") as f:
            json.dump({"prefill": cfg["prefill"], "tokens": cfg["tokens"], "key_tokens": cfg["key_tokens"],
                       "key_positions": key_pos, "ids": ids,
                       "short_nll": {t: [None if v != v else v for v in short[t].tolist()] for t in names},
                       "runs": [{"text": t, "protocol": k[0] if k != "full" else None,
                                 "spec": k[1] if k != "full" else "full", **liv[t][k]}
                                for t in names for k in liv[t]]}, f)
        with open(os.path.join(a.out, "offline.json"), "w") as f:
            json.dump([{"text": t, "protocol": p, "spec": s, **off[t][(p, s)]} for t in names for (p, s) in off[t]], f)
        if not a.quiet:
            print(os.path.join(a.out, "report.md"))
            for p in figs:
                print(p)
        return 0
    except ValidateError as e:
        print(f"kvsim validate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
