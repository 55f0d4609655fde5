#!/usr/bin/env python3
"""criticalkv.BASE (heads=uniform and heads=adakv) around snapkv and h2o, under --protocol prefill, against an
independent NumPy replay (tests/py/sparse_ref.py) on the embedded trace, whose vo_norm datasets
traces/samples/regenerate.sh records (`kvsim record --record vo_norm`; tests/py/test_vo_norm.py checks that
dataset against W_o read from the checkpoint). The rule is re-derived from ../shared/methods.md §3.2 and
kvpress's CriticalKVPress and CriticalAdaKVPress (`presses/criticalkv_press.py`), not from kvsim's code: per KV head, stage 1 keeps the base's
top int(B_h·first) (forced first; under heads=adakv at least its AdaKV safeguard int(n_kept·alpha)), stage 2
fills B_h by (s + eps) times the mean over the head's query group of the trace's ||W_o,g v_i||_1; B_h = n_kept,
or AdaKV's kvpress budgets under heads=adakv. Every metric of every (layer, head) must agree to 2e-3. The
base scores come from tests/py/test_allocators_numpy.py's independent SnapKV and H2O. Also checked: the
reweighting changes what is kept on this trace (else the test could not tell criticalkv from its base), and
a trace without vo_norm is refused in one line. Run:
    /usr/bin/python3 tests/py/test_criticalkv_numpy.py --kvsim build/kvsim
"""
import os
import shutil
import sys
import tempfile

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvsim_testlib as lib  # noqa: E402
import sparse_ref  # noqa: E402
from test_allocators_numpy import adakv_kvpress, cut, h2o, rank, snap  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRACE = os.path.join(ROOT, "traces", "samples", "stories260K.h5")  # recorded with --record vo_norm


def criticalkv(S, P, vo, eps=1e-4, first=0.5, adaptive=False, alpha=0.2):
    """S[h] = (score, forced, B) of KV head h; vo[h] = the group's mean ||W_o v_i||_1 over positions < P."""
    n_kept = min(S[0][2], P)
    budgets = [len(k) for k in adakv_kvpress(S, P, alpha)] if adaptive else [n_kept] * len(S)
    kept = []
    for h, (score, forced, _) in enumerate(S):
        order = rank(score, forced)
        n1 = int(budgets[h] * first)
        if adaptive:
            n1 = max(n1, int(n_kept * alpha))
        keep = set(order[:n1]) | {i for i in range(P) if forced[i]}
        rest = sorted((i for i in range(P) if i not in keep), key=lambda i: (-(score[i] + eps) * vo[h][i], i))
        keep |= set(rest[:max(0, budgets[h] - len(keep))])
        kept.append(sorted(keep))
    return kept


def with_vo(make_scores):
    """Wraps cut()'s allocate so it sees the layer's group-mean vo_norm (cut passes only S and P)."""
    state = {}

    def scores(lv, kv):
        state["vo"] = [lv.vo_norm_all[j * lv.G:(j + 1) * lv.G, :lv.P].mean(axis=0) for j in range(lv.Hkv)]
        return make_scores(lv, kv)

    return scores, state


def case(make_scores, **kw):
    scores, state = with_vo(make_scores)
    return cut(scores, lambda S, P: criticalkv(S, P, state["vo"], **kw))


def main():
    a = lib.parse_args()
    views = list(sparse_ref.layer_views(TRACE))
    assert views[0].vo_norm_all is not None, "the embedded trace lacks vo_norm (traces/samples/regenerate.sh)"
    print("trace: %s, first sequence P = %d, T = %d, %d layers" % (os.path.basename(TRACE), views[0].P, views[0].T,
                                                                   views[0].n_layers))
    stride = 7
    cases = [
        ("criticalkv.snapkv:budget=16,window=8", case(snap(16))),
        ("criticalkv.snapkv:budget=24,window=8,first=0.25,eps=0.01", case(snap(24), first=0.25, eps=0.01)),
        ("criticalkv.h2o:budget=16", case(h2o(16))),
        ("criticalkv.snapkv:budget=16,window=8,heads=adakv", case(snap(16), adaptive=True)),
        ("criticalkv.h2o:budget=20,heads=adakv,alpha=0.5", case(h2o(20), adaptive=True, alpha=0.5)),
    ]
    for spec, make in cases:
        ref = sparse_ref.replay(TRACE, make, stride=stride)
        got = sparse_ref.kvsim_per_head(a.kvsim, TRACE, spec, protocol="prefill", stride=stride)
        bad = sparse_ref.compare(ref, got)
        assert not bad, "\n".join([spec] + bad[:20])
        dm = sparse_ref.max_diffs(ref, got)
        print("%s max |numpy - kvsim|: %s" % (spec, ", ".join("%s %.1e" % kv for kv in dm.items())))
    # The reweighting matters here: criticalkv.snapkv keeps other tokens than snapkv in most heads, and
    # heads=adakv gives the heads of a layer uneven budgets.
    changed, heads, uneven = 0, 0, 0
    for lv in views:
        if lv.kv:
            continue
        S = [snap(16)(lv, kv) for kv in range(lv.Hkv)]
        vo = [lv.vo_norm_all[j * lv.G:(j + 1) * lv.G, :lv.P].mean(axis=0) for j in range(lv.Hkv)]
        changed += sum(p != c for p, c in zip(criticalkv(S, lv.P, vo, first=1.0), criticalkv(S, lv.P, vo)))
        heads += lv.Hkv
        uneven += len({len(k) for k in criticalkv(S, lv.P, vo, adaptive=True)}) > 1
    print("criticalkv.snapkv:budget=16 keeps a different set than snapkv in %d of %d KV heads" % (changed, heads))
    assert changed * 2 >= heads, (changed, heads)
    print("heads=adakv gives its KV heads uneven budgets in %d of %d layers" % (uneven, views[0].n_layers))
    assert uneven >= 2, uneven
    # A trace without vo_norm (a copy of the embedded one with the datasets deleted): refused in one line.
    with tempfile.TemporaryDirectory(prefix="kvsim_criticalkv_") as d:
        plain = os.path.join(d, "plain.h5")
        shutil.copy(TRACE, plain)
        with h5py.File(plain, "a") as f:
            for name in f["sequences"]:
                for l in f["sequences"][name]["layers"]:
                    del f["sequences"][name]["layers"][l]["vo_norm"]
        r = lib.run([a.kvsim, "run", "--trace", plain, "--strategy", "criticalkv.snapkv:budget=16,window=8", "--quiet"])
        lib.check_usage_error(r, "needs vo_norm")
        print("a trace without vo_norm: %s" % r.stderr.strip())
    print("ok")


if __name__ == "__main__":
    main()
