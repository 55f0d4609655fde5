#!/usr/bin/env python3
"""sparq against an independent NumPy replay (tests/py/sparse_ref.py) on the embedded trace. The rule is
re-derived from the paper's algorithm (sim/strategies/STRATEGIES.md): per KV head i1 = the r channels of
largest Σ_g |q_g|, ŝ_g = softmax(q_g[i1]·K[:, i1]ᵀ/τ_g) with τ_g = √(D·‖q_g[i1]‖₁/‖q_g‖₁), i2 = the k
positions of largest Σ_g ŝ_g (ties to the lower position), and the output α·y + (1 − α)·v̄, written
here in probability space as the weights Q = α·softmax_{i2}(z) + (1 − α)/n over all n positions and
handed to sparse_ref as the logit correction log Q − z (kvsim works in the log domain). Every metric
of every (layer, head) must agree to 2e-3.
Run as: /usr/bin/python3 test_sel_sparq.py --kvsim PATH"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sparse_ref  # noqa: E402

TRACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "traces", "samples", "stories260K.h5")


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


class Sparq:
    def __init__(self, lv, k, r, vmean=True, kcopy=False):
        self.lv, self.k, self.r, self.vmean, self.kcopy = lv, k, r, vmean, kcopy

    def select(self, t, q):
        lv, D, n = self.lv, self.lv.D, t + 1
        K = lv.k[:n]
        i1 = np.argsort(-np.abs(q).sum(axis=0), kind="stable")[: self.r]
        s_hat = []
        for g in range(lv.G):
            l1, l1r = np.abs(q[g]).sum(), np.abs(q[g, i1]).sum()
            a = K[:, i1] @ q[g, i1] / np.sqrt(D * l1r / l1) if l1r > 0 else np.zeros(n)
            s_hat.append(softmax(a))
        i2 = np.sort(np.argsort(-np.sum(s_hat, axis=0), kind="stable")[: self.k])
        rest = np.setdiff1d(np.arange(n), i2)
        out = []
        for g in range(lv.G):
            if not self.vmean or len(rest) == 0:
                out.append((i2, None, None))
                continue
            z = K @ q[g] / np.sqrt(D)
            alpha = s_hat[g][i2].sum()
            rest_share = s_hat[g][rest].sum()  # 1 − α
            w = np.full(n, rest_share / n)
            w[i2] += alpha * softmax(z[i2])
            pos = np.concatenate([i2, rest])
            out.append((pos, np.log(w[pos]) - z[pos], len(i2)))
        return out

    def metadata_bytes(self, t):  # v̄ fp32; with kcopy the channel-major fp16 copy of K
        return 4.0 * self.lv.D * self.vmean + 2.0 * (t + 1) * self.lv.D * self.kcopy

    def metadata_read_bytes(self, t, sel):  # the i1 channels of every key (fp16) and v̄
        return 2.0 * self.r * (t + 1) + 4.0 * self.lv.D * self.vmean


CASES = [
    ("sparq:k=16,r=2", dict(k=16, r=2)),
    ("sparq:k=64", dict(k=64, r=1)),  # r defaults to D/8 = 1
    ("sparq:budget=32,r=4,kcopy=1", dict(k=32, r=4, kcopy=True)),
    ("sparq:k=16,r=4,vmean=0", dict(k=16, r=4, vmean=False)),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvsim", required=True)
    a = ap.parse_args()
    stride = 7
    for spec, kw in CASES:
        got = sparse_ref.agree(a.kvsim, TRACE, spec, lambda lv: Sparq(lv, **kw), stride=stride)
    print("ok")


if __name__ == "__main__":
    main()
