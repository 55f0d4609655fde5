"""An independent NumPy replay of protocol C (sparse reads over a full cache) for checking selectors.

Written from the metric definitions (design.md §4, sim/strategies/STRATEGIES.md "Protocols"), not from
kvsim's code: for every (layer, query head) and evaluated decode step t it computes the exact attention
over 0..t in double, asks a selector which positions the query head reads (with optional logit
corrections and a loaded prefix), and derives out_cos, out_rel_l2, mass, kl, tv, topk8/32_recall,
logit_rel_err, k/v_rel_err, bytes, ratio, read_bytes and read_ratio. Means over the evaluated steps are
compared with `kvsim run --json --per-head`.

The cache is the full cache at fp16 bytes (4·D per token: key and value), exact keys and values, one
slot per position; a selector may hold fewer positions (a stage-1 cut) through `held_positions(t)`.

Selector API (one object per (layer, KV head), made by make_selector(lv)):
  select(t, q)                -> list of G tuples (positions, bias or None, loaded or None); q is [G, D]
  metadata_read_bytes(t, sel) -> bytes of metadata the step reads (optional, default 0)
  metadata_bytes(t)           -> bytes of metadata held (optional, default 0)
  held_positions(t)           -> sorted positions the cache holds at step t (optional, default 0..t)
  key_for(positions)          -> [n, D] keys attention uses for those positions (optional: rebuilt keys)
lv fields: layer, n_layers, kv, P, T, D, G, q [G, T, D] (the group's query heads), k, v [T, D],
q_pre [G, T, D] / k_pre [T, D] (None when absent), k_all / v_all [Hkv, T, D], q_all [H, T, D],
k_pre_all [Hkv, T, D] (None when absent),
tokens [T], rope_theta, rope_style.
"""
import json
import subprocess
from types import SimpleNamespace

import h5py
import numpy as np

METRICS = ["out_cos", "out_rel_l2", "mass", "kl", "tv", "topk8_recall", "topk32_recall", "logit_rel_err",
           "k_rel_err", "v_rel_err", "bytes", "ratio", "read_bytes", "read_ratio"]
BYTE_METRICS = {"bytes", "read_bytes"}


def first_sequence(trace):
    with h5py.File(trace, "r") as f:
        return sorted(f["sequences"].keys())[0]


def layer_views(trace, seq=None, P=None):
    """Yields one lv per (layer, KV head) of sequence `seq` (default: the first by name, as kvsim)."""
    with h5py.File(trace, "r") as f:
        seq = seq or sorted(f["sequences"].keys())[0]
        g = f["sequences"][seq]
        H, Hkv, D, L = (int(f.attrs[a]) for a in ("n_heads", "n_kv_heads", "head_dim", "n_layers"))
        G = H // Hkv
        T = int(g.attrs["n_tokens"])
        P = int(P if P is not None else g.attrs["prefill_len"])
        tokens = g["tokens"][()] if "tokens" in g else None
        for layer in range(L):
            d = g["layers"][str(layer)]
            q = d["q"][()].astype(np.float64)
            k = d["k"][()].astype(np.float64)
            v = d["v"][()].astype(np.float64)
            q_pre = d["q_pre"][()].astype(np.float64) if "q_pre" in d else None
            k_pre = d["k_pre"][()].astype(np.float64) if "k_pre" in d else None
            vo_norm = d["vo_norm"][()].astype(np.float64) if "vo_norm" in d else None
            for kv in range(Hkv):
                hs = slice(kv * G, (kv + 1) * G)
                yield SimpleNamespace(layer=layer, n_layers=L, kv=kv, P=P, T=T, D=D, G=G, H=H, Hkv=Hkv,
                                      q=q[hs], k=k[kv], v=v[kv],
                                      q_pre=None if q_pre is None else q_pre[hs],
                                      k_pre=None if k_pre is None else k_pre[kv],
                                      vo_norm=None if vo_norm is None else vo_norm[hs], vo_norm_all=vo_norm,
                                      q_all=q, k_all=k, v_all=v, k_pre_all=k_pre, tokens=tokens,
                                      rope_theta=float(f.attrs["rope_theta"]), rope_style=str(f.attrs["rope_style"]),
                                      seq=seq)


def _topk_positions(p, k):
    # Best first; ties to the lower position (a stable sort of -p).
    return np.argsort(-p, kind="stable")[:k]


def step_metrics(q, K, V, t, pos, bias, loaded, held, keys, eps):
    """Metrics of one query head at step t. q [D]; K, V [T, D] exact; pos: positions attended; bias:
    per-entry logit corrections or None; keys: the keys attention uses for pos ([n, D])."""
    D = q.shape[0]
    scale = 1.0 / np.sqrt(D)
    z_full = (K[: t + 1] @ q) * scale
    lse = np.logaddexp.reduce(z_full)
    p_full = np.exp(z_full - lse)
    o = p_full @ V[: t + 1]
    z_exact = z_full[pos]
    z_hat = (keys @ q) * scale
    logit = z_hat + (0.0 if bias is None else bias)
    w = np.exp(logit - np.logaddexp.reduce(logit))
    o_hat = w @ V[pos]
    pbar = p_full[pos]
    m = pbar.sum()
    n = len(pos)
    u = eps / (n + 1)
    nz = pbar > 0
    kl = float(np.sum(pbar[nz] * np.log(pbar[nz] / ((1 - eps) * w[nz] + u))))
    bucket = max(0.0, 1.0 - m)
    if bucket > 0:
        kl += bucket * np.log(bucket / u)
    r = {}
    nr, nh = np.dot(o, o), np.dot(o_hat, o_hat)
    r["out_cos"] = float(np.dot(o, o_hat) / np.sqrt(nr * nh)) if nr > 0 and nh > 0 else float(nr == nh)
    r["out_rel_l2"] = float(np.linalg.norm(o - o_hat) / np.sqrt(nr)) if nr > 0 else float(np.linalg.norm(o - o_hat))
    r["mass"] = float(m)
    r["kl"] = kl
    r["tv"] = 0.5 * float(np.abs(pbar - w).sum()) + 0.5 * bucket
    present = np.zeros(t + 1, bool)
    present[pos] = True
    for kk in (8, 32):
        top = _topk_positions(p_full, min(kk, t + 1))
        r["topk%d_recall" % kk] = float(present[top].mean())
    zz = np.dot(z_exact, z_exact)
    r["logit_rel_err"] = float(np.sqrt(np.sum((z_exact - z_hat) ** 2) / zz)) if zz > 0 else 0.0
    return r


def replay(trace, make_selector, seq=None, P=None, stride=1, eps=1e-6):
    """{(layer, query head): {metric: mean over the evaluated steps}} for the selector."""
    out = {}
    for lv in layer_views(trace, seq, P):
        sel = make_selector(lv)
        D, G = lv.D, lv.G
        rows = [{m: [] for m in METRICS} for _ in range(G)]
        for t in range(lv.P, lv.T):
            if (t - lv.P) % stride:
                continue
            held = np.asarray(sel.held_positions(t)) if hasattr(sel, "held_positions") else np.arange(t + 1)
            picks = sel.select(t, lv.q[:, t, :])
            assert len(picks) == G, (len(picks), G)
            full_bytes = 4.0 * D * (t + 1)
            held_bytes = 4.0 * D * len(held)
            meta_held = sel.metadata_bytes(t) if hasattr(sel, "metadata_bytes") else 0.0
            loaded = set()
            for pos, _, ld in picks:
                pos = np.asarray(pos)
                loaded.update(int(x) for x in pos[: (len(pos) if ld is None else ld)])
            meta_read = sel.metadata_read_bytes(t, picks) if hasattr(sel, "metadata_read_bytes") else 0.0
            read = 4.0 * D * len(loaded) + meta_read
            # k/v_rel_err: what the cache holds (exact keys and values: 0 over the held positions).
            for g, (pos, bias, ld) in enumerate(picks):
                pos = np.asarray(pos, dtype=np.int64)
                keys = sel.key_for(pos) if hasattr(sel, "key_for") else lv.k[pos]
                b = None if bias is None else np.asarray(bias, dtype=np.float64)
                r = step_metrics(lv.q[g, t], lv.k, lv.v, t, pos, b, ld, held, keys, eps)
                r["k_rel_err"] = 0.0
                r["v_rel_err"] = 0.0
                r["bytes"] = held_bytes + meta_held
                r["ratio"] = r["bytes"] / full_bytes
                r["read_bytes"] = read
                r["read_ratio"] = read / full_bytes
                for m in METRICS:
                    rows[g][m].append(r[m])
        for g in range(G):
            out[(lv.layer, lv.kv * G + g)] = {m: float(np.mean(rows[g][m])) for m in METRICS}
    return out


def kvsim_per_head(kvsim, trace, spec, protocol="sparse", stride=1, P=None, seq=None, extra=()):
    """kvsim's per-(layer, head) means for one strategy spec (stats cache off, quiet)."""
    cmd = [kvsim, "run", "--trace", trace, "--strategy", spec, "--protocol", protocol, "--stride", str(stride),
           "--json", "--per-head", "--quiet", "--stats-cache", "off", "--backend", "ref"]
    if P is not None:
        cmd += ["--prefill", str(P)]
    if seq is not None:
        cmd += ["--sequence", seq]
    cmd += list(extra)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("kvsim run failed (%d): %s" % (r.returncode, r.stderr.strip()))
    j = json.loads(r.stdout)
    heads = j["results"][0]["heads"]
    return {(h["layer"], h["head"]): {m: h[m]["mean"] for m in METRICS} for h in heads}


def compare(ref, got, tol=2e-3, metrics=METRICS):
    """Mismatch lines (empty: agree). Bytes compare relatively, the rest absolutely, both to tol."""
    bad = []
    if set(ref) != set(got):
        return ["heads differ: numpy %d, kvsim %d" % (len(ref), len(got))]
    for key in sorted(ref):
        for m in metrics:
            a, b = ref[key][m], got[key][m]
            lim = tol * max(1.0, abs(a)) if m in BYTE_METRICS else tol
            if not abs(a - b) <= lim:
                bad.append("layer %d head %d %s: numpy %.6g, kvsim %.6g" % (key[0], key[1], m, a, b))
    return bad


def max_diffs(ref, got, metrics=METRICS):
    """Per metric, the largest |numpy − kvsim| over heads (relative for bytes)."""
    out = {}
    for m in metrics:
        d = 0.0
        for key in ref:
            a, b = ref[key][m], got[key][m]
            d = max(d, abs(a - b) / max(1.0, abs(a)) if m in BYTE_METRICS else abs(a - b))
        out[m] = d
    return out


def agree(kvsim, trace, spec, make_selector, stride=1, P=None, seq=None, tol=2e-3, protocol="sparse"):
    """Replays `spec` in kvsim under `protocol` and `make_selector` here; raises AssertionError listing the
    mismatches, else prints the largest difference per metric and returns kvsim's per-head means."""
    ref = replay(trace, make_selector, seq=seq, P=P, stride=stride)
    got = kvsim_per_head(kvsim, trace, spec, protocol=protocol, stride=stride, P=P, seq=seq)
    label = spec if P is None else "%s prefill %s" % (spec, P)
    label = label if protocol == "sparse" else "%s (%s)" % (label, protocol)
    bad = compare(ref, got, tol)
    assert not bad, "\n".join([label] + bad[:20])
    d = max_diffs(ref, got)
    print("%s max |numpy - kvsim|: %s" % (label, ", ".join("%s %.1e" % kv for kv in d.items())))
    return got
