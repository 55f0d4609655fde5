#!/usr/bin/env python3
"""quest against an independent NumPy replay (tests/py/sparse_ref.py) on the embedded trace. The
selection is re-derived from the rule in sim/strategies/STRATEGIES.md: pages of `page` positions from 0,
per page the channel-wise min m and max M of the keys, per query head U_p = Σ_c max(q_c m_c, q_c M_c),
n = min(max(3, B // page), #pages) pages read; with last=1 the newest page plus the top n − 1 of the
others (ties to the lower page); layers in dense_layers read everything and hold no metadata. Every
metric of every (layer, head) must agree to 2e-3.
Run as: /usr/bin/python3 test_sel_quest.py --kvsim PATH"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sparse_ref  # noqa: E402

TRACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "traces", "samples", "stories260K.h5")


class Quest:
    def __init__(self, lv, budget, page=16, last=True, dense_layers=(0, 1)):
        self.lv, self.B, self.page, self.last = lv, budget, page, last
        self.dense = lv.layer in dense_layers

    def pages(self, t):
        return t // self.page + 1

    def select(self, t, q):
        lv, page = self.lv, self.page
        if self.dense:
            return [(np.arange(t + 1), None, None)] * lv.G
        n_pages = self.pages(t)
        keys = lv.k[: t + 1]
        lo = np.stack([keys[p * page:(p + 1) * page].min(axis=0) for p in range(n_pages)])
        hi = np.stack([keys[p * page:(p + 1) * page].max(axis=0) for p in range(n_pages)])
        n_read = min(max(3, self.B // page), n_pages)
        out = []
        for g in range(lv.G):
            u = np.maximum(q[g] * lo, q[g] * hi).sum(axis=1)
            if self.last:
                others = np.argsort(-u[:-1], kind="stable")[: n_read - 1]
                chosen = np.concatenate([others, [n_pages - 1]])
            else:
                chosen = np.argsort(-u, kind="stable")[:n_read]
            pos = np.concatenate([np.arange(p * page, min((p + 1) * page, t + 1)) for p in chosen])
            out.append((np.sort(pos), None, None))
        return out

    def metadata_bytes(self, t):  # fp16 min and max per page
        return 0.0 if self.dense else 4.0 * self.lv.D * self.pages(t)

    def metadata_read_bytes(self, t, sel):
        return self.metadata_bytes(t)


CASES = [
    ("quest:budget=64", dict(budget=64)),
    ("quest:budget=64,dense_layers=", dict(budget=64, dense_layers=())),
    ("quest:budget=64,dense_layers=,last=0", dict(budget=64, dense_layers=(), last=False)),
    ("quest:budget=16,page=4,dense_layers=1,3", dict(budget=16, page=4, dense_layers=(1, 3))),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvsim", required=True)
    a = ap.parse_args()
    stride = 7
    for spec, kw in CASES:
        got = sparse_ref.agree(a.kvsim, TRACE, spec, lambda lv: Quest(lv, **kw), stride=stride)
    print("ok")


if __name__ == "__main__":
    main()
