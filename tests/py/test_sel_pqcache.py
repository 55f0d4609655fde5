#!/usr/bin/env python3
"""pqcache against an independent NumPy replay (tests/py/sparse_ref.py) on the embedded trace.

The selector is re-derived from its definition in sim/strategies/STRATEGIES.md, not from kvsim's code:
per KV head, Euclidean k-means per sub-space in double (init from the evenly spaced tokens k·n/2^bits,
sums accumulated point by point in position order so that both sides round alike), m codes per token,
scores Σ_j q_j·centroid_{j,code}, top candidates ties to the lower position; new=code codes each decode
token by its nearest centroids and slides the local window, new=exact keeps every decode token exact.
Scaled parameters (sinks=4, local=8, bits=3) keep the middle non-empty on a prompt of ~40 tokens; the
paper's defaults (sinks=128, local=128) must degenerate to full attention and say so on stderr.
Every metric of every (layer, head) must agree to 2e-3.
Run as: /usr/bin/python3 test_sel_pqcache.py --kvsim PATH"""
import argparse
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sparse_ref  # noqa: E402

TRACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "traces", "samples", "stories260K.h5")


def nearest(cent, x):
    """Index of the nearest centroid (squared Euclidean, first minimum)."""
    return int(np.argmin(((x[None, :] - cent) ** 2).sum(axis=1)))


def kmeans(x, C, iters):
    n = len(x)
    cent = x[[(k * n) // C for k in range(C)]].copy()
    for _ in range(iters):
        codes = [nearest(cent, xi) for xi in x]
        sums, counts = np.zeros_like(cent), np.zeros(C, np.int64)
        for xi, c in zip(x, codes):
            sums[c] += xi
            counts[c] += 1
        for k in range(C):
            if counts[k]:
                cent[k] = sums[k] / counts[k]
    return cent, [nearest(cent, xi) for xi in x]


class PqCache:
    def __init__(self, lv, sinks=128, local=128, m=2, bits=6, iters=10, top=0.1, budget=None, new="code"):
        self.lv, self.m, self.bits, self.C = lv, m, bits, 1 << bits
        self.local, self.top, self.budget, self.code_new = local, top, budget, new == "code"
        self.s0 = min(sinks, lv.P)
        self.mid_end = max(self.s0, lv.P - local)
        n_fit = lv.P - self.s0 if self.code_new else self.mid_end - self.s0
        self.full = self.mid_end == self.s0 or n_fit < self.C
        if self.full:
            return
        self.d = lv.D // m
        self.cent, codes = [], []
        for j in range(m):
            x = lv.k[self.s0:self.s0 + n_fit, j * self.d:(j + 1) * self.d]
            c, cj = kmeans(x, self.C, iters)
            self.cent.append(c)
            codes.append(cj)
        self.codes = [list(col) for col in zip(*codes)]  # [token][j]

    def code_of(self, key):
        return [nearest(self.cent[j], key[j * self.d:(j + 1) * self.d]) for j in range(self.m)]

    def window(self, t):
        """(first exact position after the candidates, number of candidates)."""
        c1 = max(self.s0, t - self.local) if self.code_new else self.mid_end
        return c1, c1 - self.s0

    def select(self, t, q):
        if self.full:
            return [(np.arange(t + 1), None, None)] * q.shape[0]
        while self.code_new and len(self.codes) < t + 1 - self.s0:  # decode tokens, skipped steps too
            self.codes.append(self.code_of(self.lv.k[self.s0 + len(self.codes)]))
        c1, n_cand = self.window(t)
        n_exact = self.s0 + (t + 1 - c1)
        n_top = max(0, self.budget - n_exact) if self.budget is not None else int(self.top * n_cand)
        n_top = min(n_top, n_cand)
        codes = np.array(self.codes[:n_cand]).reshape(n_cand, self.m)
        out = []
        for g in range(q.shape[0]):
            score = np.zeros(n_cand)
            for j in range(self.m):
                table = self.cent[j] @ q[g, j * self.d:(j + 1) * self.d]
                score += table[codes[:, j]]
            top = self.s0 + np.argsort(-score, kind="stable")[:n_top]
            pos = np.sort(np.r_[np.arange(self.s0), top, np.arange(c1, t + 1)])
            out.append((pos, None, None))
        return out

    def metadata_bytes(self, t):
        if self.full:
            return 0.0
        n_coded = (t + 1 - self.s0) if self.code_new else (self.mid_end - self.s0)
        return n_coded * self.m * self.bits / 8.0 + 2.0 * self.C * self.lv.D

    def metadata_read_bytes(self, t, sels):
        if self.full:
            return 0.0
        _, n_cand = self.window(t)
        return n_cand * self.m * self.bits / 8.0 + 2.0 * self.C * self.lv.D


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvsim", required=True)
    a = ap.parse_args()
    stride = 7
    cases = [
        ("pqcache:sinks=4,local=8,bits=3", dict(sinks=4, local=8, bits=3)),
        ("pqcache:sinks=4,local=8,bits=3,new=exact", dict(sinks=4, local=8, bits=3, new="exact")),
        ("pqcache:sinks=2,local=6,bits=2,m=4,iters=3,budget=16", dict(sinks=2, local=6, bits=2, m=4, iters=3, budget=16)),
        ("pqcache:sinks=4,local=8,bits=3,top=0.3,m=1", dict(sinks=4, local=8, bits=3, top=0.3, m=1)),
    ]
    for spec, kw in cases:
        got = sparse_ref.agree(a.kvsim, TRACE, spec, lambda lv: PqCache(lv, **kw), stride=stride)
        assert all(v["read_ratio"] < 1 for v in got.values()), spec  # something was left unread
    # The paper's defaults on a ~40-token prompt: the middle is empty; full attention, said once.
    r = subprocess.run([a.kvsim, "run", "--trace", TRACE, "--strategy", "pqcache", "--protocol", "sparse",
                        "--stride", "50", "--json", "--quiet", "--stats-cache", "off"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("pqcache: sinks + local >= P") == 1, r.stderr
    print("ok")


if __name__ == "__main__":
    main()
