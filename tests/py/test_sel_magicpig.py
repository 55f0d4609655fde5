#!/usr/bin/env python3
"""magicpig against an independent NumPy replay (tests/py/sparse_ref.py) on the embedded trace.

The selector is re-derived from its definition in sim/strategies/STRATEGIES.md, not from kvsim's code:
Gaussian W from splitmix64 + Box–Muller (Python ints and the math module), SimHash codes of the
centred sampled-region keys, the 2-of-L match rule, the sampling-probability correction
-log(w + 1e-4), the exact set (sinks, last `local` prompt tokens, every decode token) and the dense
layers. Scaled parameters (K=4, L=20, sinks=4, local=8) keep the sampled region non-empty on a
prompt of ~40 tokens. Every metric of every (layer, head) must agree to 2e-3.
Run as: /usr/bin/python3 test_sel_magicpig.py --kvsim PATH"""
import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sparse_ref  # noqa: E402

TRACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "traces", "samples", "stories260K.h5")
MASK = (1 << 64) - 1


def gaussians(state, n):
    """n standard normals: splitmix64 draws, u = (draw >> 11) / 2^53, Box–Muller in pairs."""
    out = []

    def draw():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    while len(out) < n:
        u1 = (draw() >> 11) * 2.0 ** -53
        u2 = (draw() >> 11) * 2.0 ** -53
        r = math.sqrt(-2.0 * math.log(1.0 - u1))
        a = 2.0 * math.pi * u2
        out += [r * math.cos(a), r * math.sin(a)]
    return np.array(out[:n])


class MagicPig:
    sampled = 0  # tokens sampled over the whole replay (the check must have something to check)

    def __init__(self, lv, K, L, sinks, local, dense=None, seed=0):
        self.lv, self.K, self.L = lv, K, L
        if dense is None:
            dense = [x for x in (0, 16, 32, 48, 64) if x < lv.n_layers]
        self.dense = lv.layer in dense
        self.m0 = min(sinks, lv.P)
        self.m1 = max(self.m0, lv.P - local)
        if self.dense or self.m1 == self.m0:
            return
        state = ((seed * 0x100000001B3) & MASK) ^ ((lv.layer // 16) << 32) ^ lv.kv
        self.W = gaussians(state, lv.D * K * L).reshape(lv.D, K * L)
        M = lv.k[self.m0:self.m1]
        self.mu = M.mean(axis=0)
        self.codes = self.hash(M - self.mu)  # [|M|, L]

    def hash(self, x):
        bits = (np.atleast_2d(x) @ self.W > 0).reshape(-1, self.L, self.K)
        return (bits * (1 << np.arange(self.K))).sum(axis=-1)

    def full(self):
        return self.dense or self.m1 == self.m0

    def select(self, t, q):
        if self.full():
            return [(np.arange(t + 1), None, None)] * q.shape[0]
        exact = np.r_[np.arange(self.m0), np.arange(self.m1, t + 1)]
        out = []
        for g in range(q.shape[0]):
            qc = self.hash(q[g])[0]
            hit = (self.codes == qc).sum(axis=1) >= 2
            idx = np.nonzero(hit)[0]
            MagicPig.sampled += len(idx)
            kc = self.lv.k[self.m0 + idx] - self.mu
            cos = np.clip(kc @ q[g] / (np.linalg.norm(q[g]) * np.linalg.norm(kc, axis=1)), -1, 1)
            p = (1 - np.arccos(cos) / np.pi) ** self.K
            w = 1 - (1 - p) ** self.L - self.L * p * (1 - p) ** (self.L - 1)
            bias = np.r_[np.zeros(len(exact)), -np.log(w + 1e-4)]
            out.append((np.r_[exact, self.m0 + idx], bias, None))
        return out

    def metadata_bytes(self, t):
        return 0.0 if self.full() else 2.0 * self.L * (self.m1 - self.m0) + 2.0 * self.lv.D

    def metadata_read_bytes(self, t, sels):
        return 0.0 if self.full() else 2.0 * self.L * (self.m1 - self.m0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvsim", required=True)
    a = ap.parse_args()
    stride = 7
    cases = [
        ("magicpig:K=4,L=20,sinks=4,local=8", dict(K=4, L=20, sinks=4, local=8)),
        ("magicpig:K=3,L=12,sinks=2,local=4,dense_layers=,seed=5", dict(K=3, L=12, sinks=2, local=4, dense=[], seed=5)),
        ("magicpig:K=4,L=20,sinks=4,local=8,dense_layers=1,3", dict(K=4, L=20, sinks=4, local=8, dense=[1, 3])),
    ]
    for spec, kw in cases:
        MagicPig.sampled = 0
        got = sparse_ref.agree(a.kvsim, TRACE, spec, lambda lv: MagicPig(lv, **kw), stride=stride)
        # Not vacuous: tokens were sampled, and some were not (mass < 1 somewhere).
        assert MagicPig.sampled > 0, spec
        assert any(v["mass"] < 1 - 1e-6 for v in got.values()), spec
    print("ok")


if __name__ == "__main__":
    main()
