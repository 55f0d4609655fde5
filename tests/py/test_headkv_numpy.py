#!/usr/bin/env python3
"""headkv under --protocol prefill and --protocol evict against an independent NumPy replay
(tests/py/sparse_ref.py) on the embedded trace (5 layers, H = 8 query heads on Hkv = 4). The rule is
re-derived from ../shared/methods.md §3.3 and KVCache-Factory (`run_longbench.py`: the head capacities;
`pyramidkv/pyramidkv_utils.py` HeadKVCluster: the cut), not from kvsim's code:
  ŝ = head scores / their sum over all L·H query heads; cap = round(ŝ·floor(C/beta)·L·H + C − floor(C/beta))
  (half to even, torch.round); per KV head round(mean of its group's caps); the window's attention (last w
  prompt queries, causal), mean over the window, mean over the group, max-pooled (padding never wins); the top
  min(cap, P − w) past tokens (ties: the lower position) and the window; P < C: not compressed. Under evict the
  chosen tokens stay and the rest slide within cap + w. Bytes: 4·D per slot, plus 4 per head of a layer whose
  heads differ in length.
The head scores come from files written here: a random table and the reference's JSON format. headkv.snapkv
(headkv.BASE around snapkv with HeadKV's window scoring: window 8, max-pool 7, group mean) must follow the same
rule. Every metric of
every (layer, head) must agree to 2e-3; bytes exactly.
Run: /usr/bin/python3 tests/py/test_headkv_numpy.py --kvsim build/kvsim
"""
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvsim_testlib as lib  # noqa: E402
import sparse_ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRACE = os.path.join(ROOT, "traces", "samples", "stories260K.h5")


def capacities(scores, C, beta, G):
    """[L, Hkv] past-token capacities from [L, H] head scores."""
    L, H = scores.shape
    s = scores / scores.sum()
    share = np.floor(C / beta)
    cap_q = np.round(s * share * L * H + C - share)  # numpy rounds half to even, as torch.round
    return np.round(cap_q.reshape(L, H // G, G).mean(axis=2)).astype(int)


def snap_votes(lv, w, kernel):
    P = lv.P
    votes = np.zeros(P - w)
    for g in range(lv.G):
        rows = []
        for j in range(P - w, P):
            z = lv.k[:j + 1] @ lv.q[g, j] / np.sqrt(lv.D)
            e = np.exp(z - z.max())
            rows.append((e / e.sum())[:P - w])
        votes += np.mean(rows, axis=0) / lv.G
    h = kernel // 2
    return np.array([votes[max(0, i - h):i + h + 1].max() for i in range(P - w)])


class HeadKV:
    def __init__(self, lv, caps, C, w, kernel, evict):
        self.lv, self.evict = lv, evict
        P = lv.P
        cut = P >= C
        cap_of = [min(c, P - w) if cut else c for c in caps[lv.layer]]
        cap = cap_of[lv.kv]
        self.keep = cap + w
        self.mixed = len(set(cap_of)) > 1 and (cut or evict)
        self.heavy = set()
        self.cur = list(range(P))
        if cut:
            v = snap_votes(lv, w, kernel)
            self.heavy = set(sorted(range(P - w), key=lambda i: (-v[i], i))[:cap])
            self.cur = sorted(self.heavy) + list(range(P - w, P))
        self.t = P - 1

    def metadata_bytes(self, t):
        return 4.0 if self.mixed else 0.0

    def held_positions(self, t):
        while self.t < t - 1:
            self.t += 1
            self.cur.append(self.t)
            if self.evict:
                while len(self.cur) > self.keep:
                    self.cur.remove(min(p for p in self.cur if p not in self.heavy))
        return np.array(sorted(self.cur + [t]))

    def select(self, t, q):
        return [(self.held_positions(t), None, None)] * self.lv.G


def main():
    a = lib.parse_args()
    stride = 7
    views = list(sparse_ref.layer_views(TRACE))
    L, H, G = views[0].n_layers, views[0].H, views[0].G
    rng = np.random.default_rng(11)
    scores = rng.gamma(0.7, size=(L, H))  # uneven, as retrieval scores are
    with tempfile.TemporaryDirectory(prefix="kvsim_headkv_") as d:
        tsv = os.path.join(d, "heads.tsv")
        np.savetxt(tsv, scores, delimiter="\t")
        js = os.path.join(d, "heads.json")  # the reference's format: lists averaged per head
        with open(js, "w") as f:
            f.write(json.dumps({"%d-%d" % (l, h): [float(scores[l, h]) * 0.5, float(scores[l, h]) * 1.5]
                                for l in range(L) for h in range(H)}))
        cases = [  # spec, C, beta, w, kernel, prefill
            ("headkv:budget=16,scores=" + tsv, 16, 1.01, 8, 7, None),
            ("headkv:budget=12,beta=2,window=4,kernel=3,scores=" + tsv, 12, 2.0, 4, 3, None),
            ("headkv:budget=64,beta=1.5,scores=" + js, 64, 1.5, 8, 7, 200),
            # headkv.BASE around snapkv with HeadKV's window scoring is the same rule (the base's window forced)
            ("headkv.snapkv:budget=16,window=8,kernel=7,pool=max,scores=" + tsv, 16, 1.01, 8, 7, None),
            ("headkv.snapkv:budget=64,beta=1.5,window=8,kernel=7,pool=max,scores=" + js, 64, 1.5, 8, 7, 200),
        ]
        for spec, C, beta, w, kernel, Pc in cases:
            caps = capacities(scores, C, beta, G)
            print("%s: capacities per (layer, KV head) %s" % (os.path.basename(spec), caps.tolist()))
            assert len(np.unique(caps)) > 1, caps
            for protocol in ("prefill", "evict"):
                sparse_ref.agree(a.kvsim, TRACE, spec, lambda lv: HeadKV(lv, caps, C, w, kernel, protocol == "evict"),
                                 stride=stride, P=Pc, protocol=protocol)
    print("ok")


if __name__ == "__main__":
    main()
