#!/usr/bin/env python3
"""fp8 and int8 against an independent NumPy implementation on the embedded trace (stories260K).

Written from the rules in ../shared/methods.md §4.1-§4.2 and the metric definitions of design.md §4, not from
kvsim's code. fp8: the 256-entry decode table is built here from each format's fields (e4m3fn: 4 exponent bits,
bias 7, 3 mantissa bits, no inf, S.1111.111 NaN; e5m2: 5, 15, 2, IEEE inf/NaN); y = clamp(x / s, -max, max) in
float32, then the nearest finite table value, ties to the even code; x^ = value * s. Scales: tensor amax / max
over the layer's prompt (all KV heads, positions < P), head the same per KV head, dynamic max|K| / 200 and
max|V| / 100 over the layer's prompt, token max|x_t| / max per token (1 for an all-zero token), one s = 1.
int8: s = fp16(max|x| / 127) per token (or per group of channels), code = clip(rint(x / s), -127, 127) (rint:
ties to even), 0 where s = 0. Bytes per (layer, KV head) at step t: (t + 1) tokens x 2 tensors x (D + scale
bytes per token), plus the fixed scales (fp8 head: 4 per tensor; tensor/dynamic: 4 per tensor per layer, a
1 / Hkv share per KV head).

Under `full` every token 0..t is in the cache at step t: k_rel_err = sqrt(sum ||k_i - k^_i||^2 / sum ||k_i||^2)
over i <= t, likewise v; logit_rel_err = ||z - z^|| / ||z|| with z_i = q_t . k_i / sqrt(D). Means over the decode
steps t = P..T-1 per (layer, query head) must agree with `kvsim run --per-head` to 2e-3 (bytes relatively).
Run as: /usr/bin/python3 test_codecs_8bit.py --kvsim PATH"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sparse_ref  # noqa: E402  (trace reading, kvsim's per-head output, comparison)

TRACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "traces", "samples", "stories260K.h5")
METRICS = ["k_rel_err", "v_rel_err", "logit_rel_err", "bytes"]

FORMATS = {"e4m3": dict(e=4, m=3, bias=7, ieee=False), "e5m2": dict(e=5, m=2, bias=15, ieee=True)}


def fp8_table(fmt):
    """Values of the 128 non-negative codes (NaN / inf where the format has them)."""
    f = FORMATS[fmt]
    vals = np.empty(128)
    for c in range(128):
        E, M = c >> f["m"], c & ((1 << f["m"]) - 1)
        top = (1 << f["e"]) - 1
        if f["ieee"] and E == top:
            vals[c] = np.inf if M == 0 else np.nan
        elif not f["ieee"] and E == top and M == (1 << f["m"]) - 1:
            vals[c] = np.nan
        elif E == 0:
            vals[c] = 2.0 ** (1 - f["bias"]) * M / (1 << f["m"])
        else:
            vals[c] = 2.0 ** (E - f["bias"]) * (1 + M / (1 << f["m"]))
    return vals


def fp8_round(y, fmt):
    """y float32 -> the dequantized fp8 value (float64): saturate, nearest, ties to the even code."""
    vals = fp8_table(fmt)
    finite = vals[np.isfinite(vals)]  # codes 0..n-1, ascending
    top = finite[-1]
    a = np.minimum(np.abs(y.astype(np.float64)), top)
    hi = np.clip(np.searchsorted(finite, a, side="left"), 1, len(finite) - 1)
    lo = hi - 1
    dlo, dhi = a - finite[lo], finite[hi] - a
    pick = np.where(dlo < dhi, lo, np.where(dhi < dlo, hi, np.where(lo % 2 == 0, lo, hi)))
    return np.copysign(finite[pick], y)


def fp8_max(fmt):
    vals = fp8_table(fmt)
    return vals[np.isfinite(vals)].max()


def fp8_layer(k, v, P, fmt, mode):
    """k, v float32 [Hkv, T, D] of one layer -> dequantized copies and (scale bytes per token per tensor,
    fixed scale bytes per KV head)."""
    Hkv = k.shape[0]
    fmax = np.float32(fp8_max(fmt))
    out = []
    for x, dyn in ((k, np.float32(200.0)), (v, np.float32(100.0))):
        if mode == "one":
            s = np.ones((Hkv, 1, 1), np.float32)
        elif mode in ("tensor", "dynamic"):
            m = np.abs(x[:, :P]).max()
            s = np.full((Hkv, 1, 1), (m / (dyn if mode == "dynamic" else fmax)) if m > 0 else 1.0, np.float32)
        elif mode == "head":
            m = np.abs(x[:, :P]).max(axis=(1, 2))
            s = np.where(m > 0, m / fmax, np.float32(1.0)).astype(np.float32).reshape(Hkv, 1, 1)
        elif mode == "token":
            m = np.abs(x).max(axis=2, keepdims=True)
            s = np.where(m > 0, m / fmax, np.float32(1.0)).astype(np.float32)
        y = (x / s).astype(np.float32)
        out.append(fp8_round(y, fmt) * s.astype(np.float64))
    per_token = 4.0 if mode == "token" else 0.0
    fixed = {"one": 0.0, "token": 0.0, "head": 8.0, "tensor": 8.0 / Hkv, "dynamic": 8.0 / Hkv}[mode]
    return out[0], out[1], per_token, fixed


def int8_layer(k, v, group):
    out = []
    D = k.shape[2]
    g = group or D
    for x in (k, v):
        xs = x.reshape(x.shape[0], x.shape[1], D // g, g)
        s = (np.abs(xs).max(axis=3, keepdims=True) / np.float32(127.0)).astype(np.float16).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.where(s > 0, np.clip(np.rint(xs / s), -127, 127), 0.0)
        out.append((c * s.astype(np.float64)).reshape(x.shape))
    return out[0], out[1], 2.0 * (D // g), 0.0


def reference(trace, codec):
    """{(layer, query head): {metric: mean over decode steps}} for `full` + the codec."""
    res = {}
    cache = {}
    for lv in sparse_ref.layer_views(trace):
        if lv.layer not in cache:
            k32, v32 = lv.k_all.astype(np.float32), lv.v_all.astype(np.float32)
            cache = {lv.layer: codec(k32, v32, lv.P)}
        kh, vh, per_token, fixed = cache[lv.layer]
        k, v = lv.k.astype(np.float32).astype(np.float64), lv.v.astype(np.float32).astype(np.float64)
        dk, dv = kh[lv.kv], vh[lv.kv]
        T, D, P = lv.T, lv.D, lv.P
        steps = np.arange(P, T)
        ek = np.cumsum(((k - dk) ** 2).sum(axis=1))[steps]
        nk = np.cumsum((k ** 2).sum(axis=1))[steps]
        ev = np.cumsum(((v - dv) ** 2).sum(axis=1))[steps]
        nv = np.cumsum((v ** 2).sum(axis=1))[steps]
        k_rel, v_rel = np.sqrt(ek / nk), np.sqrt(ev / nv)
        by = (steps + 1) * 2.0 * (D + per_token) + fixed
        causal = np.tril(np.ones((T, T), bool))
        for g in range(lv.G):
            q = lv.q[g].astype(np.float32).astype(np.float64)
            z, zh = q @ k.T / np.sqrt(D), q @ dk.T / np.sqrt(D)
            num = np.where(causal, (z - zh) ** 2, 0.0).sum(axis=1)[steps]
            den = np.where(causal, z ** 2, 0.0).sum(axis=1)[steps]
            lr = np.where(den > 0, np.sqrt(num / np.where(den > 0, den, 1.0)), 0.0)
            res[(lv.layer, lv.kv * lv.G + g)] = {"k_rel_err": float(k_rel.mean()), "v_rel_err": float(v_rel.mean()),
                                                 "logit_rel_err": float(lr.mean()), "bytes": float(by.mean())}
    return res


CASES = [
    ("fp8", lambda k, v, P: fp8_layer(k, v, P, "e4m3", "tensor")),
    ("fp8:format=e4m3,scale=one", lambda k, v, P: fp8_layer(k, v, P, "e4m3", "one")),
    ("fp8:format=e4m3,scale=dynamic", lambda k, v, P: fp8_layer(k, v, P, "e4m3", "dynamic")),
    ("fp8:format=e4m3,scale=token", lambda k, v, P: fp8_layer(k, v, P, "e4m3", "token")),
    ("fp8:format=e5m2,scale=head", lambda k, v, P: fp8_layer(k, v, P, "e5m2", "head")),
    ("fp8:format=e5m2,scale=one", lambda k, v, P: fp8_layer(k, v, P, "e5m2", "one")),
    ("int8", lambda k, v, P: int8_layer(k, v, 0)),
    ("int8:group=4", lambda k, v, P: int8_layer(k, v, 4)),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvsim", required=True)
    a = ap.parse_args()
    # The table itself: the formats' landmarks (methods.md §4.1).
    t4, t5 = fp8_table("e4m3"), fp8_table("e5m2")
    assert fp8_max("e4m3") == 448 and t4[8] == 2.0 ** -6 and t4[1] == 2.0 ** -9 and np.isnan(t4[127])
    assert fp8_max("e5m2") == 57344 and t5[4] == 2.0 ** -14 and t5[1] == 2.0 ** -16 and np.isinf(t5[124])
    assert fp8_round(np.array([1.0625, 1.1875, 17.0, 500.0], np.float32), "e4m3").tolist() == [1.0, 1.25, 16.0, 448.0]
    failed = []
    for spec, codec in CASES:
        ref = reference(TRACE, codec)
        got = sparse_ref.kvsim_per_head(a.kvsim, TRACE, spec, protocol="evict")
        bad = sparse_ref.compare(ref, got, 2e-3, METRICS)
        d = sparse_ref.max_diffs(ref, got, METRICS)
        mean = {m: np.mean([r[m] for r in ref.values()]) for m in METRICS}
        print("%-32s max |numpy - kvsim|: %s  (numpy means: %s)" % (
            spec, ", ".join("%s %.1e" % kv for kv in d.items()), ", ".join("%s %.4g" % kv for kv in mean.items())))
        if bad:
            failed.append("\n".join([spec] + bad[:10]))
    assert not failed, "\n".join(failed)
    print("ok")


if __name__ == "__main__":
    main()
