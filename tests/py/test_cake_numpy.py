#!/usr/bin/env python3
"""cake under --protocol prefill and --protocol evict against an independent NumPy replay (tests/py/sparse_ref.py)
on the embedded trace (5 layers, so the layer budgets are really planned across layers). The rule is re-derived
from ../shared/methods.md §3.5 and the reference code (qtris123/cakekv: cake/model/modify_llama.py's window
attention, entropy, variance and token scores; cake/cake_cache.py's prefill cut and CakeDecodingKVCache_LayerWise;
cake/utils.py's adjust_budgets), not from kvsim's code:
  per layer, A = softmax of the last w prompt queries of every query head over all keys (causal in the window),
  A_past its columns < P - w; E = -sum A_past log(A_past + 1e-10), V = sum of var_j A_past (ddof 1);
  p = E^(1/tau1) V^(1/tau2); B_l = int(p_l / sum p (C - w) L), capped at P - w with the excess spread and the sum
  fixed (adjust_budgets); no compression when P <= C + w (every layer C - w);
  token score per query head: mean_j + gamma var_j of A over past columns, avg-pooled (zero padding, / kernel),
  mean over the group; keep the top B_l (ties: lower position) in score order, then the window;
  decode (evict): after step t, when the cache holds more than B_l + w, the step's attention (softmax of q_t over
  the held keys, mean over the group) on all but the cache's last w, pooled in the cache's order, keeps the top
  B_l (score order), then the last w.
Every metric of every (layer, head) must agree to 2e-3. Also checked: the plan is uneven on this trace (else
the test could not tell cake from a uniform budget), and sums to (C - w) L.
Run: /usr/bin/python3 tests/py/test_cake_numpy.py --kvsim build/kvsim
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvsim_testlib as lib  # noqa: E402
import sparse_ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRACE = os.path.join(ROOT, "traces", "samples", "stories260K.h5")


def window_attention(q, k, P, w):
    """[H, w, P]: softmax over keys 0..j of the last w prompt queries j of every query head (q [H, T, D])."""
    H, _, D = q.shape
    G = H // k.shape[0]
    A = np.zeros((H, w, P))
    for h in range(H):
        for r, j in enumerate(range(P - w, P)):
            z = k[h // G, :j + 1] @ q[h, j] / np.sqrt(D)
            e = np.exp(z - z.max())
            A[h, r, :j + 1] = e / e.sum()
    return A


def avg_pool(x, kernel):
    """F.avg_pool1d(x, kernel, padding=kernel // 2, stride=1): zero padding, divided by the kernel."""
    pad = kernel // 2
    xp = np.concatenate([np.zeros(pad), x, np.zeros(pad)])
    return np.array([xp[i:i + kernel].sum() / kernel for i in range(len(x))])


def plan(layers, C, w, P, tau1=1.0, tau2=1.0):
    L = len(layers)
    if P <= C + w:
        return [C - w] * L
    pref = []
    for q, k in layers:
        A = window_attention(q, k, P, w)[:, :, :P - w]
        E = -(A * np.log(A + 1e-10)).sum()
        V = A.var(axis=1, ddof=1).sum()
        pref.append(E ** (1 / tau1) * V ** (1 / tau2))
    total, seq = (C - w) * L, P - w
    raw = [int(p / sum(pref) * total) for p in pref]
    # adjust_budgets: cap, spread the excess over the layers under seq (remainder to the first), fix the sum
    excess = sum(max(x - seq, 0) for x in raw)
    b = [min(x, seq) for x in raw]

    def spread(amount, valid):
        idx = [i for i in range(L) if valid[i]]
        if not idx:
            return
        per, rem = divmod(abs(amount), len(idx))
        sign = 1 if amount > 0 else -1
        for n, i in enumerate(idx):
            b[i] += sign * (per + (1 if n < rem else 0))

    if excess > 0:
        spread(excess, [x < seq for x in b])
    diff = total - sum(b)
    if diff > 0:
        spread(diff, [x < seq for x in b])
    elif diff < 0:
        spread(diff, [x > 1 for x in b])
    return [min(max(x, 0), seq) for x in b]


def token_scores(lv, w, gamma, kernel):
    A = window_attention(lv.q, lv.k[None], lv.P, w)  # this KV head's G query heads
    n = lv.P - w
    s = np.zeros(n)
    for g in range(lv.G):
        raw = A[g].mean(axis=0) + gamma * A[g].var(axis=0, ddof=1)
        s += avg_pool(raw[:n], kernel) / lv.G
    return s


def best(order, score, n):
    """The n best of `order` by score (higher first, then the lower position), best first."""
    idx = sorted(range(len(order)), key=lambda i: (-score[i], order[i]))[:n]
    return [order[i] for i in idx]


class Cake:
    """The cache in the reference's order: held_positions(t) is what step t attends (the cache plus t)."""

    def __init__(self, lv, budgets, C, w, gamma, kernel, evict):
        self.lv, self.w, self.kernel, self.evict = lv, w, kernel, evict
        self.B = budgets[lv.layer]
        P = lv.P
        if P <= C + w:
            self.cur = list(range(P))
        else:
            self.cur = best(list(range(P - w)), token_scores(lv, w, gamma, kernel), self.B) + list(range(P - w, P))
        self.t = P - 1

    def held_positions(self, t):
        while self.t < t - 1:
            self.t += 1
            self.cur.append(self.t)
            if self.evict and len(self.cur) > self.B + self.w:
                pos = np.array(self.cur)
                a = np.zeros(len(pos))
                for g in range(self.lv.G):  # the weights a cache's attention reports: float32
                    z = self.lv.k[pos] @ self.lv.q[g, self.t] / np.sqrt(self.lv.D)
                    e = np.exp(z - z.max())
                    a += (e / e.sum()).astype(np.float32)
                a /= self.lv.G
                past = self.cur[:-self.w]
                pooled = avg_pool(a[:len(past)], self.kernel)
                self.cur = best(past, pooled, self.B) + self.cur[-self.w:]
        return np.array(sorted(self.cur + [t]))

    def select(self, t, q):
        return [(self.held_positions(t), None, None)] * self.lv.G


def main():
    a = lib.parse_args()
    views = list(sparse_ref.layer_views(TRACE))
    layers = [(v.q_all, v.k_all) for v in views if v.kv == 0]
    P, T = views[0].P, views[0].T
    print("trace: %s, first sequence P = %d, T = %d, %d layers" % (os.path.basename(TRACE), P, T, len(layers)))
    stride = 7
    cases = [  # spec, C, w, gamma, kernel, tau1, tau2, prefill (None: the trace's)
        ("cake:budget=16,window=8", 16, 8, 200.0, 5, 1.0, 1.0, None),
        ("cake:budget=20,window=6,gamma=10,kernel=3,tau1=1.6,tau2=0.4", 20, 6, 10.0, 3, 1.6, 0.4, None),
        ("cake:budget=64", 64, 32, 200.0, 5, 1.0, 1.0, 200),
        # P = 47 <= C + w = 40 + 8: no compression at prefill; decode evicts to C
        ("cake:budget=40,window=8", 40, 8, 200.0, 5, 1.0, 1.0, None),
    ]
    for spec, C, w, gamma, kernel, tau1, tau2, Pc in cases:
        Pp = Pc or P
        budgets = plan(layers, C, w, Pp, tau1, tau2)
        compressed = Pp > C + w
        if compressed:
            assert sum(budgets) == (C - w) * len(layers), budgets
        print("%s at P = %d: layer budgets %s" % (spec, Pp, budgets))
        for protocol in ("prefill", "evict"):
            sparse_ref.agree(a.kvsim, TRACE, spec,
                             lambda lv: Cake(lv, budgets, C, w, gamma, kernel, protocol == "evict"),
                             stride=stride, P=Pc, protocol=protocol)
    # The layer preference matters on this trace: the default-shaped plan is uneven.
    b = plan(layers, 64, 32, 200)
    assert len(set(b)) > 1, b
    print("ok")


if __name__ == "__main__":
    main()
