#!/usr/bin/env python3
"""oracle_topk against an independent NumPy replay (tests/py/sparse_ref.py) on the embedded trace:
the selection is re-derived from its definition (per query head the `budget` positions with the highest
q·k/√D, ties to the lower position); every metric of every (layer, head) must agree to 2e-3. The same
replay with every position read must agree with kvsim's `full` under protocol evict (a check of
sparse_ref itself), and oracle_topk with budget >= T must equal `full` exactly.
Run as: /usr/bin/python3 test_sel_oracle_topk.py --kvsim PATH"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sparse_ref  # noqa: E402

TRACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "traces", "samples", "stories260K.h5")


class Oracle:
    def __init__(self, lv, budget):
        self.lv, self.B = lv, budget

    def select(self, t, q):
        z = q @ self.lv.k[: t + 1].T  # [G, t + 1]; the scale does not change the order
        out = []
        for g in range(q.shape[0]):
            top = np.argsort(-z[g], kind="stable")[: min(self.B, t + 1)]
            out.append((np.sort(top), None, None))
        return out


class Everything:
    def __init__(self, lv):
        self.G = lv.G

    def select(self, t, q):
        return [(np.arange(t + 1), None, None)] * self.G


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvsim", required=True)
    a = ap.parse_args()
    stride = 7
    # sparse_ref itself: reading every position is the full cache.
    ref = sparse_ref.replay(TRACE, Everything, stride=stride)
    got = sparse_ref.kvsim_per_head(a.kvsim, TRACE, "full", protocol="evict", stride=stride)
    bad = sparse_ref.compare(ref, got)
    assert not bad, "\n".join(["sparse_ref vs kvsim full:"] + bad[:20])
    for budget in (4, 16, 64):
        got = sparse_ref.agree(a.kvsim, TRACE, "oracle_topk:budget=%d" % budget, lambda lv: Oracle(lv, budget), stride=stride)
    # budget >= T: every slot read, every metric equal to full's (exactly, as kvsim computes both).
    full = sparse_ref.kvsim_per_head(a.kvsim, TRACE, "full", protocol="evict", stride=stride)
    big = sparse_ref.kvsim_per_head(a.kvsim, TRACE, "oracle_topk:budget=512", stride=stride)
    for key in full:
        for m in sparse_ref.METRICS:
            assert full[key][m] == big[key][m], (key, m, full[key][m], big[key][m])
    print("ok")


if __name__ == "__main__":
    main()
