#!/usr/bin/env python3
"""defensivekv under --protocol prefill and --protocol evict against an independent NumPy replay
(tests/py/sparse_ref.py) on the embedded trace (5 layers, H = 8 on Hkv = 4, recorded with vo_norm). The rule is
re-derived from ../shared/methods.md §3.14 and the reference code (FFY0/DefensiveKV
kvpress/presses/efficient_defensivekv_press.py: compute_window_attention, score, vwl1norm; the layer-wide top-k
of efficient_ada_scorer_press.py), not from kvsim's code:
  A = softmax over keys 0..j of the last w prompt queries j of every query head, its past columns i < n = P - w;
  window_bias = mean over heads and rows of the mass on the last w past columns (the reference slices first);
  each row avg-pooled (zero padding, / kernel) and rescaled to its past mass; d = max over the group and the rows,
  then max(d, mean d); d *= the group's mean vo_norm over its sum across KV heads; per KV head the first
  argmax(cumsum(sorted ā) >= mass - window_bias) tokens by ā (capped at B - w) and the window score max(d);
  the layer keeps its best Hkv·B (press_ratio: int(P (1 - r) Hkv)); ties: higher score, then the window's and
  stage 1's tokens (the reference scores them the maximum so that they stay), lower position, lower head. Protocol B appends every later token; A keeps the chosen prompt tokens and slides the window and the
  new tokens within each head's budget (the allocators' rule, tests/py/test_allocators_numpy.py's Slide).
Every metric of every (layer, head) must agree to 2e-3, bytes exactly; the head budgets must be uneven.
Run: /usr/bin/python3 tests/py/test_defensivekv_numpy.py --kvsim build/kvsim
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvsim_testlib as lib  # noqa: E402
import sparse_ref  # noqa: E402
from test_allocators_numpy import Cut, Slide  # noqa: E402
from test_cake_numpy import avg_pool, window_attention  # noqa: E402  (the same window attention and pooling)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRACE = os.path.join(ROOT, "traces", "samples", "stories260K.h5")


def layer_keep(lv, w, kernel, mass, B, r, vnorm):
    """[Hkv] lists of kept prompt positions of lv's layer, and the window's positions (forced)."""
    q, k, vo, P, H, Hkv, G = lv.q_all, lv.k_all, lv.vo_norm_all, lv.P, lv.H, lv.Hkv, lv.G
    w = min(w, P)
    n = P - w
    past = window_attention(q, k, P, w)[:, :, :n]  # [H, w, P] softmax of the window's queries, causal
    window_bias = past[:, :, -w:].sum(axis=-1).mean() if n > 0 else 0.0
    ave = past.reshape(Hkv, G, w, n).mean(axis=(1, 2))
    d = np.zeros((Hkv, n))
    for h in range(H):
        for row in range(w):
            base = past[h, row].sum()
            pooled = avg_pool(past[h, row], kernel)
            s = pooled / pooled.sum() * base if pooled.sum() > 0 else np.zeros(n)
            d[h // G] = np.maximum(d[h // G], s)
    d = np.maximum(d, d.mean(axis=1, keepdims=True))
    if vnorm:
        nbar = vo[:, :n].reshape(Hkv, G, n).mean(axis=1)
        d = d * nbar / nbar.sum(axis=0, keepdims=True)
    top = d.max()
    score = np.full((Hkv, P), top)
    score[:, :n] = d
    pinned = np.ones((Hkv, P), bool)  # the window and stage 1's tokens win ties at the maximum
    pinned[:, :n] = False
    cap = max(0, (int(P * (1 - r) - w) if r is not None else B - w))
    thr = mass - window_bias
    for kv in range(Hkv):
        norm = ave[kv] / ave[kv].sum()
        order = sorted(range(n), key=lambda i: (-norm[i], i))
        cum = np.cumsum(norm[order])
        hit = np.nonzero(cum >= thr)[0]
        count = int(hit[0]) if len(hit) else 0
        for i in order[:min(count, cap)]:
            score[kv, i] = top
            pinned[kv, i] = True
    n_total = int(P * (1 - r) * Hkv) if r is not None else Hkv * B
    flat = sorted(((kv, i) for kv in range(Hkv) for i in range(P)), key=lambda x: (-score[x], not pinned[x], x[1], x[0]))
    kept = [[] for _ in range(Hkv)]
    for kv, i in flat[:n_total]:
        kept[kv].append(i)
    return [sorted(x) for x in kept], [i >= n for i in range(P)]


class Defensive:
    memo = {}

    def __new__(cls, lv, w, kernel, mass, B, r, vnorm, evict):
        key = (lv.layer, lv.P, w, kernel, mass, B, r, vnorm)
        if key not in cls.memo:
            cls.memo[key] = layer_keep(lv, w, kernel, mass, B, r, vnorm)
        kept, forced = cls.memo[key]
        varlen = len({len(x) for x in kept}) > 1
        if evict:
            return Slide(lv, kept[lv.kv], forced, varlen)
        return Cut(lv, kept[lv.kv], varlen)


def main():
    a = lib.parse_args()
    cases = [  # spec, window, kernel, mass, B, press_ratio, vnorm, prefill
        ("defensivekv:budget=16,window=8", 8, 5, 0.9, 16, None, True, None),
        ("defensivekv:budget=20,window=6,kernel=3,mass=0.7,vnorm=0", 6, 3, 0.7, 20, None, False, None),
        ("defensivekv:budget=64", 32, 5, 0.9, 64, None, True, 200),
        ("defensivekv:press_ratio=0.8,window=16", 16, 5, 0.9, None, 0.8, True, 160),
    ]
    views = list(sparse_ref.layer_views(TRACE))
    for spec, w, kernel, mass, B, r, vnorm, Pc in cases:
        lv0 = next(sparse_ref.layer_views(TRACE, P=Pc))
        kept, _ = layer_keep(lv0, w, kernel, mass, B if B else int(lv0.P * (1 - r)), r, vnorm)
        print("%s: layer 0 keeps per KV head %s" % (spec, [len(x) for x in kept]))
        assert len({len(x) for x in kept}) > 1, kept  # the budgets are uneven across heads
        for protocol in ("prefill", "evict"):
            Bp = B if B else None
            sparse_ref.agree(a.kvsim, TRACE, spec,
                             lambda lv: Defensive(lv, w, kernel, mass, Bp if Bp else int(lv.P * (1 - r)), r, vnorm,
                                                  protocol == "evict"),
                             stride=7, P=Pc, protocol=protocol)
    assert views
    print("ok")


if __name__ == "__main__":
    main()
