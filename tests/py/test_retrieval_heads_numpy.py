#!/usr/bin/env python3
"""`kvsim record` with needles and `kvsim heads --method retrieval` on stories260K, against NumPy.

Independently of kvsim, from the Retrieval Head reference code (nightdessert/Retrieval_Head,
retrieval_head_detection.py: find_needle_idx, decode, retrieval_calculate): the needle's span is the first
window of the prompt's ids holding more than 90% of the needle's distinct ids (the needle encoded here with
tests/py/test_kvzip_numpy.py's own llama2.c tokenizer); a decode step is the query at position t = P - 1, P, ...
(at most 50) predicting token t + 1; a query head hits when its top-1 attention over keys 0..t (the largest
q·k in float64 from the trace's float32; ties: the lower position) lies in the needle and holds the predicted
token, adding 1 / needle length. The reference counts a run when the answer recalls the needle (ROUGE-1
recall over 50); here over token ids. Every (layer, head) score must equal NumPy's to 1e-12, the span the
trace's attributes, the counted sequences the recall rule's; the file must drive headkv:scores=FILE.
Skipped (exit 77) when ../shared/models is missing. Run:
    /usr/bin/python3 tests/py/test_retrieval_heads_numpy.py --kvsim build/kvsim
"""
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvsim_testlib as lib  # noqa: E402
from test_kvzip_numpy import MODEL, TOKENIZER, Llama2cTokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROMPTS = [  # a needle sentence inside a short haystack, then a question the story model may answer by copying
    {"name": "ball", "needle": "Lily has a big red ball.",
     "prompt": "Once upon a time there was a girl. Lily has a big red ball. She went to the park with her mom. "
               "What does Lily have? Lily has a big"},
    {"name": "cat", "needle": "The cat is named Tom.",
     "prompt": "One day a boy found a little cat in the garden. The cat is named Tom. The boy was happy. "
               "The cat is named"},
    {"name": "plain", "prompt": "Tom went to the shop."},  # no needle: not scored
]


def find_needle(prompt, needle):
    want = set(needle)
    for i in range(len(prompt)):
        if len(set(prompt[i:i + len(needle)]) & want) / len(want) > 0.9:
            return i, min(len(prompt), i + len(needle))
    return -1, -1


def recall(needle, generated):
    have = collections.Counter(generated)
    hit = 0
    for x in needle:
        if have[x] > 0:
            have[x] -= 1
            hit += 1
    return hit / len(needle)


def numpy_scores(f, seq, steps=50):
    """[L, H] scores, the generated tokens and the needle's tokens of one sequence."""
    g = f["sequences"][seq]
    L, H, Hkv = (int(f.attrs[a]) for a in ("n_layers", "n_heads", "n_kv_heads"))
    T, P = int(g.attrs["n_tokens"]), int(g.attrs["prefill_len"])
    ns, ne = int(g.attrs["needle_start"]), int(g.attrs["needle_end"])
    tok = [int(x) for x in g["tokens"][()]]
    out = np.zeros((L, H))
    counted = list(range(P - 1, min(T - 1, P - 1 + steps)))
    for l in range(L):
        q = g["layers/%d/q" % l][()].astype(np.float64)
        k = g["layers/%d/k" % l][()].astype(np.float64)
        for h in range(H):
            for t in counted:
                j = int(np.argmax(k[h // (H // Hkv), :t + 1] @ q[h, t]))  # argmax: the first of equal maxima
                if ns <= j < ne and tok[j] == tok[t + 1]:
                    out[l, h] += 1.0 / (ne - ns)
    return out, [tok[t + 1] for t in counted], tok[ns:ne]


def main():
    a = lib.parse_args()
    if not os.path.exists(MODEL):
        lib.skip("../shared/models not found")
    tok = Llama2cTokenizer(TOKENIZER)
    tmp = tempfile.mkdtemp(prefix="kvsim_retrieval_")
    try:
        prompts, trace = os.path.join(tmp, "p.jsonl"), os.path.join(tmp, "needles.h5")
        with open(prompts, "w") as f:
            for p in PROMPTS:
                f.write(json.dumps(p) + "\n")
        r = lib.run([a.kvsim, "record", "--model", MODEL, "--prompts", prompts, "--generate", "30", "--dtype",
                     "float32", "--quiet", "--out", trace])
        assert r.returncode == 0, r.stderr
        with h5py.File(trace, "r") as f:
            for p in PROMPTS:
                g = f["sequences"][p["name"]]
                if "needle" not in p:
                    assert "needle_start" not in g.attrs
                    continue
                ids = [int(x) for x in g["tokens"][:int(g.attrs["prefill_len"])]]
                span = find_needle(ids, tok.encode(p["needle"]))
                assert span == (int(g.attrs["needle_start"]), int(g.attrs["needle_end"])), (span, dict(g.attrs))
            print("needle spans: %s" % {p["name"]: (int(f["sequences"][p["name"]].attrs["needle_start"]),
                                                      int(f["sequences"][p["name"]].attrs["needle_end"]))
                                        for p in PROMPTS if "needle" in p})
            ref = {p["name"]: numpy_scores(f, p["name"]) for p in PROMPTS if "needle" in p}
            L, H = int(f.attrs["n_layers"]), int(f.attrs["n_heads"])
        for min_recall in ("0", "0.5"):
            out = os.path.join(tmp, "heads_%s.json" % min_recall)
            r = lib.run([a.kvsim, "heads", "--method", "retrieval", "--trace", trace, "--min-recall", min_recall,
                         "--out", out])
            assert r.returncode == 0, r.stderr
            got = json.load(open(out))
            assert sorted(got) == sorted("%d-%d" % (l, h) for l in range(L) for h in range(H)), sorted(got)
            names = [n for n in ref if recall(ref[n][2], ref[n][1]) >= float(min_recall)]
            print("--min-recall %s: counted %s (recall %s)" % (
                min_recall, names, {n: round(recall(ref[n][2], ref[n][1]), 3) for n in ref}))
            worst, hits = 0.0, 0.0
            for l in range(L):
                for h in range(H):
                    want = [ref[n][0][l, h] for n in names]
                    have = got["%d-%d" % (l, h)]
                    assert len(have) == len(want), (l, h, have, want)
                    worst = max([worst] + [abs(x - y) for x, y in zip(have, want)])
                    hits += sum(want)
            print("  %d x %d heads, max |kvsim - numpy| %.1e, total score %.3f" % (L, H, worst, hits))
            assert worst <= 1e-12, worst
            if min_recall == "0":
                assert hits > 0, "no head copied a needle token: the test could not tell a wrong rule"
        # the file drives headkv
        r = lib.run([a.kvsim, "run", "--trace", os.path.join(ROOT, "traces", "samples", "stories260K.h5"),
                     "--strategy", "headkv:budget=16,scores=" + os.path.join(tmp, "heads_0.json"), "--protocol",
                     "prefill", "--quiet"])
        assert r.returncode == 0, r.stderr
        # bad input: no needle anywhere, a bad --needle
        plain = os.path.join(tmp, "plain.h5")
        subprocess.run([a.kvsim, "record", "--model", MODEL, "--prompt", "Tom went to the shop.", "--generate", "8",
                        "--quiet", "--out", plain], check=True)
        r = lib.run([a.kvsim, "heads", "--method", "retrieval", "--trace", plain])
        assert r.returncode == 2 and "no sequence has a needle" in r.stderr, r.stderr
        r = lib.run([a.kvsim, "heads", "--method", "retrieval", "--trace", plain, "--needle", "5:3"])
        assert r.returncode == 2 and "give START:END" in r.stderr, r.stderr
        bad = os.path.join(tmp, "bad.jsonl")
        with open(bad, "w") as f:
            f.write(json.dumps({"prompt": "Tom went to the shop.", "needle": "A purple elephant flew."}) + "\n")
        r = lib.run([a.kvsim, "record", "--model", MODEL, "--prompts", bad, "--quiet", "--out",
                     os.path.join(tmp, "bad.h5")])
        assert r.returncode == 2 and "is not in the prompt" in r.stderr, r.stderr
        assert not os.path.exists(os.path.join(tmp, "bad.h5"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("ok")


if __name__ == "__main__":
    main()
