#!/usr/bin/env python3
"""`kvsim record` and `kvsim generate` end to end on stories260K, checked with h5py and numpy.

Independent checks (numpy, float64): the recorded q and k are RoPE (interleaved pairs, theta 10000)
of the recorded q_pre and k_pre; the recorded o is softmax(q k^T / sqrt(D)) v with GQA; the prompt
"Zoo" is [1, 410, 469, 347] (../shared/models/README.md); the generated continuation equals what
`kvsim generate --ids` prints; a bfloat16 trace holds the float32 trace rounded to nearest-even.
Skipped (exit 77, "skipped: ...", which ctest reports as Skipped) when ../shared/models is missing. Run:
    /usr/bin/python3 tests/py/test_model_record.py --kvsim build/kvsim
"""
import argparse
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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "..", "shared", "models", "stories260K", "stories260K.bin")


def rope_interleaved(x, theta=10000.0):
    """x: [heads, T, D] -> rotated pairs (x[2i], x[2i+1]) at positions 0..T-1."""
    h, T, D = x.shape
    x = x.astype(np.float64)
    inv = theta ** (-np.arange(0, D, 2) / D)            # [D/2]
    ang = np.arange(T)[:, None] * inv[None, :]           # [T, D/2]
    c, s = np.cos(ang), np.sin(ang)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


def attention(q, k, v):
    """q [H, T, D], k/v [Hkv, T, D] -> causal GQA attention output [H, T, D] in float64."""
    H, T, D = q.shape
    G = H // k.shape[0]
    out = np.empty((H, T, D))
    mask = np.triu(np.ones((T, T), dtype=bool), 1)
    for h in range(H):
        z = q[h].astype(np.float64) @ k[h // G].astype(np.float64).T / np.sqrt(D)
        z[mask] = -np.inf
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        out[h] = p @ v[h // G].astype(np.float64)
    return out


def bf16_round(x):
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvsim", required=True)
    kvsim = os.path.abspath(ap.parse_args().kvsim)
    if not os.path.exists(MODEL):
        lib.skip("../shared/models not found")
    tmp = tempfile.mkdtemp(prefix="kvsim_record_")

    def run(args):
        r = subprocess.run([kvsim] + args, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, "kvsim %s failed: %s" % (" ".join(args), r.stderr)
        return r.stdout

    try:
        out = os.path.join(tmp, "zoo.h5")
        run(["record", "--model", MODEL, "--prompt", "Zoo", "--generate", "40", "--pre", "--with-o", "--out", out,
             "--quiet"])
        with h5py.File(out, "r") as f:
            assert f.attrs["format"] in ("kvtrace", b"kvtrace")
            assert int(f.attrs["complete"]) == 1
            assert f.attrs["rope_style"] in ("interleaved", b"interleaved")
            (name,) = list(f["sequences"])
            s = f["sequences"][name]
            tokens = s["tokens"][()].tolist()
            assert int(s.attrs["prefill_len"]) == 4 and int(s.attrs["n_tokens"]) == 44
            assert tokens[:4] == [1, 410, 469, 347], tokens[:4]
            gen = run(["generate", "--model", MODEL, "--ids", "--prompt", "1 410 469 347", "--steps", "40",
                       "--quiet"]).split()
            assert [int(t) for t in gen] == tokens[4:], (gen, tokens[4:])
            text = s["text"][()]
            text = text.decode() if isinstance(text, bytes) else text
            assert text.startswith("Zoo"), text[:40]
            worst_rope = worst_o = 0.0
            for l in range(int(f.attrs["n_layers"])):
                L = s["layers"][str(l)]
                q, k, v, o = L["q"][()], L["k"][()], L["v"][()], L["o"][()]
                assert q.shape == (8, 44, 8) and k.shape == (4, 44, 8)
                worst_rope = max(worst_rope, np.abs(rope_interleaved(L["q_pre"][()]) - q).max(),
                                 np.abs(rope_interleaved(L["k_pre"][()]) - k).max())
                worst_o = max(worst_o, np.abs(attention(q, k, v) - o).max())
            print("rope(q_pre) vs q: max |diff| %.2e; attention(q, k, v) vs o: max |diff| %.2e" % (worst_rope, worst_o))
            # fp32 rounding of the rotation (values of order 1) and of 8-wide dot products
            assert worst_rope <= 1e-5, worst_rope
            assert worst_o <= 1e-5, worst_o
            k32 = s["layers"]["2"]["k"][()]

        # bfloat16 storage is float32 rounded to nearest even
        out16 = os.path.join(tmp, "zoo16.h5")
        run(["record", "--model", MODEL, "--prompt", "Zoo", "--generate", "40", "--dtype", "bfloat16", "--out", out16,
             "--quiet"])
        with h5py.File(out16, "r") as f:
            (name,) = list(f["sequences"])
            k16 = f["sequences"][name]["layers"]["2"]["k"][()].astype(np.float32)
        assert np.array_equal(k16, bf16_round(k32)), np.abs(k16 - bf16_round(k32)).max()

        # several prompts from JSON lines: names, ids, per-line generate
        jl = os.path.join(tmp, "p.jsonl")
        with open(jl, "w") as fh:
            fh.write(json.dumps({"name": "a", "prompt": "Lily saw a cat.", "generate": 5}) + "\n\n")
            fh.write(json.dumps({"name": "b", "ids": [1, 403, 407], "source": "ids test"}) + "\n")
        out2 = os.path.join(tmp, "many.h5")
        run(["record", "--model", MODEL, "--prompts", jl, "--generate", "3", "--out", out2, "--quiet"])
        with h5py.File(out2, "r") as f:
            a, b = f["sequences"]["a"], f["sequences"]["b"]
            assert int(a.attrs["n_tokens"]) == int(a.attrs["prefill_len"]) + 5
            assert b["tokens"][()].tolist()[:3] == [1, 403, 407] and int(b.attrs["n_tokens"]) == 6
            src = b.attrs["source"]
            assert (src.decode() if isinstance(src, bytes) else src) == "ids test"

        # context_len: a context + question line marks the seam (the context's tokens, BOS included,
        # then the question's); --context-len applies to a line without its own; run --prefill context
        # compresses there
        cq = os.path.join(tmp, "cq.jsonl")
        with open(cq, "w") as f:
            f.write('{"name": "q", "context": "Zoo", "question": "Lily", "generate": 2}\n')
            f.write('{"name": "p", "ids": [1, 410, 469, 347, 403]}\n')
        out3 = os.path.join(tmp, "cq.h5")
        run(["record", "--model", MODEL, "--prompts", cq, "--context-len", "2", "--out", out3, "--quiet"])
        with h5py.File(out3, "r") as f:
            q, p = f["sequences"]["q"], f["sequences"]["p"]
            assert q["tokens"][()].tolist()[:4] == [1, 410, 469, 347]  # "Zoo" as above
            assert int(q.attrs["context_len"]) == 4 and int(q.attrs["prefill_len"]) > 4
            assert int(p.attrs["context_len"]) == 2 and int(p.attrs["prefill_len"]) == 5
        head = run(["run", "--trace", out3, "--sequence", "q", "--prefill", "context", "--strategy", "full",
                    "--quiet"]).splitlines()[0]
        assert " P=4 " in head, head

        # sampling: same seed, same text; top-p tiny keeps only the argmax, i.e. greedy
        s1 = run(["generate", "--model", MODEL, "--prompt", "Zoo", "--steps", "30", "--temperature", "0.9",
                  "--seed", "5", "--quiet"])
        s2 = run(["generate", "--model", MODEL, "--prompt", "Zoo", "--steps", "30", "--temperature", "0.9",
                  "--seed", "5", "--quiet"])
        assert s1 == s2
        g = run(["generate", "--model", MODEL, "--prompt", "Zoo", "--steps", "30", "--quiet"])
        t = run(["generate", "--model", MODEL, "--prompt", "Zoo", "--steps", "30", "--temperature", "1.0",
                 "--top-p", "1e-6", "--quiet"])
        assert g == t, (g, t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("record/generate end to end: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
