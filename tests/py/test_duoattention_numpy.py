#!/usr/bin/env python3
"""duoattention under --protocol prefill and --protocol evict against an independent NumPy replay
(tests/py/sparse_ref.py) on the embedded trace (5 layers x 4 KV heads, recorded with --pre). The rule is
re-derived from ../shared/methods.md §3.4 and kvpress's DuoAttentionPress and duo_attention_on_the_fly
(`presses/duo_attention_press.py`), not from kvsim's code:
  per query head, q̄ = mean of its pre-RoPE queries over the prompt, k̄ = mean of its KV head's pre-RoPE keys;
  Q = RoPE_{q_len-1}(q̄), K_p = RoPE_p(k̄), p < q_len; a = softmax_p(Q·K_p/√D); score = mean(cumsum(a)),
  averaged over the group; the round(head_ratio·L·Hkv) lowest (layer, KV head) scores stream (Python's round,
  a stable argsort); a streaming head keeps the first `sink` and the last `recent` prompt tokens (kvpress's mask
  [sink:-recent]), then grows (prefill) or slides (evict); with scores=FILE the file's values, clipped to [0, 1].
  Bytes: 4·D per slot, plus 4 bytes per head of a layer whose heads hold different lengths.
Every metric of every (layer, head) must agree to 2e-3; bytes exactly. Also checked: the on-the-fly scores
differ between heads (else the test could not tell which heads stream).
Run: /usr/bin/python3 tests/py/test_duoattention_numpy.py --kvsim build/kvsim
"""
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvsim_testlib as lib  # noqa: E402
import sparse_ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRACE = os.path.join(ROOT, "traces", "samples", "stories260K.h5")


def rope(x, pos, theta, style):
    """x [D] rotated to positions pos [n]: pairs (2i, 2i+1) (interleaved) or (i, i + D/2) (half)."""
    D = len(x)
    i = np.arange(D // 2)
    ang = np.outer(pos, theta ** (-2.0 * i / D))
    c, s = np.cos(ang), np.sin(ang)
    i0, i1 = (2 * i, 2 * i + 1) if style == "interleaved" else (i, i + D // 2)
    out = np.tile(x, (len(pos), 1)).astype(np.float64)
    out[:, i0] = x[i0] * c - x[i1] * s
    out[:, i1] = x[i0] * s + x[i1] * c
    return out


def head_scores(views, P, q_len):
    """[L, Hkv] on-the-fly scores from the prompt's pre-RoPE queries and keys."""
    L, Hkv = views[0].n_layers, views[0].Hkv
    S = np.zeros((L, Hkv))
    for lv in views:
        k_mean = lv.k_pre[:P].mean(axis=0)
        K = rope(k_mean, np.arange(q_len), lv.rope_theta, lv.rope_style)
        for g in range(lv.G):
            Q = rope(lv.q_pre[g, :P].mean(axis=0), np.array([q_len - 1]), lv.rope_theta, lv.rope_style)[0]
            z = K @ Q / np.sqrt(lv.D)
            a = np.exp(z - z.max())
            a /= a.sum()
            S[lv.layer, lv.kv] += np.cumsum(a).mean() / lv.G
    return S


def calibration_scores(trace, q_len):
    """kvsim heads: per sequence the scores of its whole text (P = T, as kvpress averages whole texts), then
    the mean over the trace's sequences."""
    import h5py
    with h5py.File(trace, "r") as f:
        names = sorted(f["sequences"].keys())
    total = None
    for name in names:
        views = list(sparse_ref.layer_views(trace, seq=name))
        S = head_scores(views, views[0].T, q_len)
        total = S if total is None else total + S
    return total / len(names)


def streaming_mask(S, ratio):
    n = round(S.size * ratio)
    mask = np.zeros(S.size, dtype=bool)
    mask[np.argsort(S, axis=None, kind="stable")[:n]] = True
    return mask.reshape(S.shape)


class Duo:
    def __init__(self, lv, mask, sink, recent, evict):
        self.lv, self.sink, self.recent, self.evict = lv, sink, recent, evict
        self.streaming = bool(mask[lv.layer, lv.kv])
        row = mask[lv.layer]
        self.mixed = bool(row.any() and not row.all()) and (lv.P > sink + recent or evict)
        P = lv.P
        self.cur = list(range(P))
        if self.streaming and P > sink + recent:
            self.cur = list(range(sink)) + list(range(P - recent, P))
        self.t = P - 1

    def metadata_bytes(self, t):
        return 4.0 if self.mixed else 0.0

    def held_positions(self, t):
        while self.t < t - 1:
            self.t += 1
            self.cur.append(self.t)
            if self.evict and self.streaming and len(self.cur) > self.sink + self.recent:
                self.cur = self.cur[:self.sink] + self.cur[len(self.cur) - self.recent:]
        return np.array(sorted(self.cur + [t]))

    def select(self, t, q):
        return [(self.held_positions(t), None, None)] * self.lv.G


def main():
    a = lib.parse_args()
    stride = 7
    with tempfile.TemporaryDirectory(prefix="kvsim_duo_") as d:
        rng = np.random.default_rng(5)
        file_scores = rng.uniform(-0.2, 1.2, size=(5, 4))  # clipped to [0, 1] by both sides
        path = os.path.join(d, "heads.tsv")
        np.savetxt(path, file_scores, delimiter="\t")
        cases = [  # spec, sink, recent, ratio, q_len, prefill (None: the trace's), file scores
            ("duoattention:sink=4,recent=16", 4, 16, 0.5, 500, None, None),
            ("duoattention:sink=8,recent=24,head_ratio=0.25,q_len=100", 8, 24, 0.25, 100, None, None),
            ("duoattention:head_ratio=0.75", 128, 256, 0.75, 500, 448, None),
            ("duoattention:sink=4,recent=16,scores=" + path, 4, 16, 0.5, 500, None, np.clip(file_scores, 0, 1)),
        ]
        for spec, sink, recent, ratio, q_len, Pc, fs in cases:
            views = list(sparse_ref.layer_views(TRACE, P=Pc))
            P = views[0].P
            S = head_scores(views, P, q_len) if fs is None else fs
            if fs is None:
                assert len(np.unique(np.round(S, 12))) == S.size, S  # no ties: the choice is well defined
            mask = streaming_mask(S, ratio)
            print("%s at P = %d: %d of %d heads stream" % (spec, P, mask.sum(), mask.size))
            for protocol in ("prefill", "evict"):
                sparse_ref.agree(a.kvsim, TRACE, spec, lambda lv: Duo(lv, mask, sink, recent, protocol == "evict"),
                                 stride=stride, P=Pc, protocol=protocol)
        # kvsim heads: the same scores from a calibration trace (here the embedded one, all 4 sequences)
        out = os.path.join(d, "cal.tsv")
        r = lib.run([a.kvsim, "heads", "--trace", TRACE, "--q-len", "200", "--out", out])
        assert r.returncode == 0, r.stderr
        got, want = np.loadtxt(out), calibration_scores(TRACE, 200)
        err = np.abs(got - want).max()
        print("kvsim heads vs NumPy over %d sequences: max |difference| %.1e" % (4, err))
        assert got.shape == (5, 4) and err < 1e-6, (got, want)
        r = lib.run([a.kvsim, "heads", "--trace", TRACE, "--out", out])
        lib.check_usage_error(r, "already exists")  # an existing table is never overwritten
        # a trace without q_pre: refused in one line
        r = lib.run([a.kvsim, "heads", "--trace", os.path.join(ROOT, "traces", "samples", "missing.h5")])
        assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    print("ok")


if __name__ == "__main__":
    main()
