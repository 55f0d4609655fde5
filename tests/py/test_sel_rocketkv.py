#!/usr/bin/env python3
"""rocketkv against an independent NumPy replay (tests/py/sparse_ref.py) on the embedded trace.

The selector is re-derived here from RocketKV's rule (STRATEGIES.md; NVlabs/RocketKV rocket.py and
infllm_utils.py): the budgets from B and N = T, stage 1 SnapKV (window 32, votes summed over the
window and the G heads, max-pool 63) when P > B_p, stage 2 SparQ on chunk maxima of sign(Σq)·k over
r_ch channels, exact softmax over the top B/2 slots. Expected bytes (held slots at 4·D plus 4·D per
chunk of min/max) and read bytes (2 per channel per chunk plus 4·D per read slot) come from the same
rule. Every metric of every (layer, head) must agree with `kvsim run` to 2e-3, at the trace's prefill
(stage 1 keeps everything there: B_p = P) and at --prefill 400 (stage 1 cuts the prompt).
Run as: /usr/bin/python3 test_sel_rocketkv.py --kvsim PATH"""
import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sparse_ref  # noqa: E402

TRACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "traces", "samples", "stories260K.h5")


def budgets(B, T, P, D):
    N, new = T, T - P
    c = max(1.0, N / B)
    r = min(0.2 + 0.06 * math.log2(c), 0.8)
    C = max(int(N / c ** r), min(2 * new, N))
    c2 = max(1.0, C / B)
    m = math.ceil(math.sqrt(c2))
    m = m if m <= c2 else 1
    return dict(C=C, Bp=C - new, topk=B // 2, c2=c2, m=m, rch=int(D * m / c2))


class Rocket:
    def __init__(self, lv, B, window=32, kernel=63):
        self.lv, self.b = lv, budgets(B, lv.T, lv.P, lv.D)
        P, D = lv.P, lv.D
        self.prompt = np.arange(P)
        if P > self.b["Bp"]:
            w = min(window, P)
            votes = np.zeros(P - w)
            for j in range(P - w, P):
                z = lv.q[:, j, :] @ lv.k[: j + 1].T / np.sqrt(D)  # [G, j + 1]
                a = np.exp(z - z.max(axis=1, keepdims=True))
                a /= a.sum(axis=1, keepdims=True)
                votes += a[:, : P - w].sum(axis=0)
            h = kernel // 2
            pooled = np.array([votes[max(0, i - h): i + h + 1].max() for i in range(P - w)])
            keep = np.argsort(-pooled, kind="stable")[: self.b["Bp"] - w]
            self.prompt = np.concatenate([np.sort(keep), np.arange(P - w, P)])

    def held_positions(self, t):
        return np.concatenate([self.prompt, np.arange(self.lv.P, t + 1)])

    def n_chunks(self, t):
        return -(-len(self.held_positions(t)) // self.b["m"])

    def select(self, t, q):
        pos = self.held_positions(t)
        n, m, D = len(pos), self.b["m"], self.lv.D
        sign = np.where(q.sum(axis=0) > 0, 1.0, -1.0)
        sk = self.lv.k[pos] * sign
        nc = -(-n // m)
        sk = np.concatenate([sk, np.full((nc * m - n, D), -np.inf)])
        kt = sk.reshape(nc, m, D).max(axis=1)
        ch = np.argsort(-np.abs(q).mean(axis=0), kind="stable")[: self.b["rch"]]
        score = np.zeros(n)
        for g in range(q.shape[0]):
            tau = np.sqrt(D * np.abs(q[g, ch]).sum() / np.abs(q[g]).sum())
            z = np.repeat((sign[ch] * q[g, ch]) @ kt[:, ch].T / tau, m)[:n]
            e = np.exp(z - z.max())
            score += e / e.sum() / q.shape[0]
        top = np.sort(np.argsort(-score, kind="stable")[: min(self.b["topk"], n)])
        return [(pos[top], None, None)] * q.shape[0]

    def metadata_bytes(self, t):
        return 4.0 * self.lv.D * self.n_chunks(t)

    def metadata_read_bytes(self, t, sel):
        return 2.0 * self.n_chunks(t) * self.b["rch"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvsim", required=True)
    a = ap.parse_args()
    stride = 7
    for B, P in ((64, None), (16, None), (64, 400), (32, 400)):
        spec = "rocketkv:budget=%d" % B
        got = sparse_ref.agree(a.kvsim, TRACE, spec, lambda lv: Rocket(lv, B), stride=stride, P=P)
    # Stage 1 cuts at P = 400 (B_p = 120 of 400 prompt tokens held; the bytes above agree, so kvsim
    # holds the same count) and keeps everything at the trace's P (B_p = P).
    lv = next(sparse_ref.layer_views(TRACE, P=400))
    assert len(Rocket(lv, 64).prompt) == budgets(64, lv.T, 400, lv.D)["Bp"] == 120
    lv = next(sparse_ref.layer_views(TRACE))
    assert budgets(64, lv.T, lv.P, lv.D)["Bp"] == lv.P
    print("ok")


if __name__ == "__main__":
    main()
