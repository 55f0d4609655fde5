#!/usr/bin/env python3
"""KVzip: `kvsim record --record kvzip` and the `kvzip` strategy, each against an independent implementation.

1. The scores. stories260K is recorded with --record kvzip (one chunk, and --kvzip-chunk 16: three chunks of a
   40-token context, so the later chunks' prompts, postfixes and sink keys are exercised; and a prompt with a
   context_len, whose scored context is the context alone). Independently of kvsim, written from
   ../shared/methods.md §3.13 and kvpress presses/kvzip_press.py (KVzipPress.prepare, score_kvzip): the repeat
   ids are built here with this file's own llama2.c tokenizer (the documented algorithm of
   ../shared/models/README.md; checked against the trace's own ids of the prompt), the PyTorch stories260K of
   tests/py/stories260k_torch.py runs context + repeat in one causal forward (the same as the repeat on the
   context's cache), its attention function hands over each layer's post-RoPE q and k, and NumPy forms the
   scores in float64: keys = k[:min(4, start)] ++ k[start:end] ++ the repeat's own (causal), softmax of
   q·k/sqrt(D), the chunk's columns, max over the group's query heads and every repeat query. Every score of
   every layer, head and token must agree to 1e-4 (float32 models on both sides), and tokens after the context
   must hold 0.
2. The cut. sparse_ref's NumPy replay on the recorded trace, the rule from the same sources
   (KVzipPress.compress_post): the first `sinks` positions score 1; drop the lowest int(r·L·Hkv·P) scores over
   all layers and heads (press_ratio=r), or L·Hkv·(P − B) (budget=B), or per layer (layerwise=1); ties drop
   the later (layer, head, position); protocol prefill (every later token appended). Every metric of every
   (layer, head) must agree to 2e-3, bytes exactly (4·D per slot plus a 4-byte length per head when a layer's
   heads differ), on the traces recorded here and on the embedded trace (its scores of the first 384 tokens).
   Also checked: the global cut gives the layers different budgets on this trace.
Skipped (exit 77) when ../shared/models is missing. Run:
    /usr/bin/python3 tests/py/test_kvzip_numpy.py --kvsim build/kvsim
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvsim_testlib as lib  # noqa: E402
import sparse_ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "..", "shared", "models", "stories260K")
MODEL = os.path.join(MODELS, "stories260K.bin")
TOKENIZER = os.path.join(MODELS, "tok512.bin")


class Llama2cTokenizer:
    """The llama2.c tokenizer.bin of ../shared/models/README.md: dummy-prefix space, code points (byte fallback
    3 + byte), then merge the adjacent pair of highest-scoring merged piece until none merges."""

    def __init__(self, path):
        with open(path, "rb") as f:
            data = f.read()
        (self.max_len,), off = struct.unpack_from("<i", data, 0), 4
        self.pieces, self.scores = [], []
        while off < len(data):
            score, n = struct.unpack_from("<fi", data, off)
            off += 8
            self.pieces.append(data[off:off + n])
            self.scores.append(score)
            off += n
        self.index = {p: i for i, p in enumerate(self.pieces)}

    def encode(self, text):
        if not text:
            return []
        ids = [self.index[b" "]]
        for ch in text:
            b = ch.encode("utf-8")
            ids += [self.index[b]] if b in self.index else [x + 3 for x in b]
        while True:
            best = None
            for i in range(len(ids) - 1):
                j = self.index.get(self.pieces[ids[i]] + self.pieces[ids[i + 1]])
                if j is not None and (best is None or self.scores[j] > self.scores[best[1]]):
                    best = (i, j)
            if best is None:
                return ids
            ids[best[0]:best[0] + 2] = [best[1]]


def repeat_chunks(context, tok, chunk):
    """kvpress KVzipPress.prepare without a chat template: [(start, end, repeat ids)]."""
    out = []
    for i, start in enumerate(range(0, len(context), chunk)):
        a = context[start:start + chunk]
        if i == 0:
            q = tok.encode("\n\nRepeat the previous context exactly.")
        else:
            q = tok.encode("\n\nRepeat the part of the previous context exactly, starting with")
            q += context[start - chunk:start][-8:]
        out.append((start, start + len(a), q + tok.encode("\n") + a))
    return out


def layer_qk(model, ids):
    """Post-RoPE q [L][H, n, D] and k [L][Hkv, n, D] (float64) of one causal forward over ids."""
    import torch
    got, saved = {}, []
    for layer in model.layers:
        attn = layer.self_attn
        inner = attn.attention_function
        saved.append(inner)

        def hook(module, q, k, v, mask, scaling, inner=inner, **kw):
            got[module.layer_idx] = (q[0].double().numpy(), k[0].double().numpy())
            return inner(module, q, k, v, mask, scaling, **kw)

        attn.attention_function = hook
    try:
        with torch.no_grad():
            model(torch.tensor([ids], dtype=torch.long))
    finally:
        for layer, inner in zip(model.layers, saved):
            layer.self_attn.attention_function = inner
    return [got[i] for i in range(len(model.layers))]


def kvzip_scores(model, context, tok, chunk, Hkv):
    """[L, Hkv, C] float64, from methods.md §3.13 / kvpress score_kvzip."""
    C, L = len(context), len(model.layers)
    s = np.zeros((L, Hkv, C))
    for start, end, rep in repeat_chunks(context, tok, chunk):
        n = len(rep)
        qk = layer_qk(model, context + rep)
        sink = min(4, start)
        for l, (q, k) in enumerate(qk):
            H, _, D = q.shape
            G = H // Hkv
            keys = np.concatenate([k[:, :sink], k[:, start:end], k[:, C:]], axis=1)  # [Hkv, sink + m + n, D]
            m = end - start
            causal = np.zeros((n, sink + m + n))
            causal[:, sink + m:] = np.triu(np.full((n, n), -np.inf), 1)
            for kv in range(Hkv):
                best = np.zeros(m)
                for g in range(G):
                    z = q[kv * G + g, C:] @ keys[kv].T / np.sqrt(D) + causal
                    a = np.exp(z - z.max(axis=1, keepdims=True))
                    a /= a.sum(axis=1, keepdims=True)
                    best = np.maximum(best, a[:, sink:sink + m].max(axis=0))
                s[l, kv, start:end] = best
    return s


def record(kvsim, out, extra):
    cmd = [kvsim, "record", "--model", MODEL, "--record", "kvzip", "--dtype", "float32", "--quiet", "--out", out]
    r = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def check_scores(kvsim, model, tok, tmp):
    """Records three traces and checks their kvzip_score; returns the one-chunk trace's path."""
    text = "Lily saw a big dog in the park. She wanted to play with it, but her mom said no."
    # the tokenizer here against kvsim's (the trace's ids of the prompt: BOS, then the text)
    plain = os.path.join(tmp, "plain.h5")
    subprocess.run([kvsim, "record", "--model", MODEL, "--prompt", text, "--quiet", "--out", plain], check=True)
    with h5py.File(plain, "r") as f:
        ids = [int(x) for x in f["sequences/0000/tokens"][()]]
        assert "kvzip_score" not in f["sequences/0000/layers/0"]
    assert ids == [1] + tok.encode(text), (ids, tok.encode(text))
    prompts = os.path.join(tmp, "prompts.jsonl")
    with open(prompts, "w") as f:
        f.write(json.dumps({"prompt": text, "name": "whole"}) + "\n")
        f.write(json.dumps({"context": text, "question": " What did Lily see?", "name": "ctx"}) + "\n")
    cases = [("one.h5", 2048), ("chunks.h5", 16)]
    worst, n = 0.0, 0
    for name, chunk in cases:
        out = os.path.join(tmp, name)
        record(kvsim, out, ["--prompts", prompts, "--generate", "40", "--kvzip-chunk", str(chunk)])
        with h5py.File(out, "r") as f:
            Hkv, L = int(f.attrs["n_kv_heads"]), int(f.attrs["n_layers"])
            for seq in ("whole", "ctx"):
                g = f["sequences"][seq]
                T, P = int(g.attrs["n_tokens"]), int(g.attrs["prefill_len"])
                C = int(g.attrs["context_len"]) if "context_len" in g.attrs else P
                assert (seq == "ctx") == (C < P), (seq, C, P)
                context = [int(x) for x in g["tokens"][:C]]
                ref = kvzip_scores(model, context, tok, chunk, Hkv)
                for l in range(L):
                    got = g["layers/%d/kvzip_score" % l][()].astype(np.float64)
                    assert got.shape == (Hkv, T), got.shape
                    assert np.all(got[:, C:] == 0), "scores after the context"
                    worst = max(worst, float(np.abs(got[:, :C] - ref[l]).max()))
                    n += Hkv * C
        print("kvzip_score, chunk %d: context scores of both sequences checked" % chunk)
    print("kvzip_score: %d (layer, head, token) scores, max |kvsim - numpy| %.2g (< 1e-4)" % (n, worst))
    assert worst < 1e-4, worst
    return os.path.join(tmp, "one.h5")


class Kvzip:
    """The cut of KVzipPress.compress_post, computed for the whole model once (the plan)."""

    plans = {}

    @staticmethod
    def plan(trace, seq, P, budget, press_ratio, layerwise, sinks):
        key = (trace, seq, P, budget, press_ratio, layerwise, sinks)
        if key in Kvzip.plans:
            return Kvzip.plans[key]
        with h5py.File(trace, "r") as f:
            g = f["sequences"][seq]
            L = int(f.attrs["n_layers"])
            s = np.stack([g["layers/%d/kvzip_score" % l][()].astype(np.float64)[:, :P] for l in range(L)])
        s[:, :, :sinks] = 1.0
        Lh, Hkv, _ = s.shape
        keep = np.ones(s.shape, bool)
        flat = s.reshape(-1)

        def drop(lo, hi, n):
            n = min(n, hi - lo)
            order = sorted(range(lo, hi), key=lambda i: (flat[i], -i))[:n]  # lowest first, later index first
            keep.reshape(-1)[order] = False

        def n_drop(pairs):
            return int(pairs * press_ratio) if press_ratio is not None else pairs // P * max(0, P - budget)

        per = Hkv * P
        if layerwise:
            for l in range(Lh):
                drop(l * per, (l + 1) * per, n_drop(per))
        else:
            drop(0, Lh * per, n_drop(Lh * per))
        Kvzip.plans[key] = keep
        return keep

    def __init__(self, lv, trace, budget=None, press_ratio=None, layerwise=False, sinks=4):
        keep = Kvzip.plan(trace, lv.seq, lv.P, budget, press_ratio, layerwise, sinks)
        self.lv = lv
        self.kept = list(np.nonzero(keep[lv.layer, lv.kv])[0])
        counts = keep[lv.layer].sum(axis=1)
        self.mixed = len(set(counts.tolist())) > 1

    def held_positions(self, t):
        return np.array(self.kept + list(range(self.lv.P, t + 1)))

    def metadata_bytes(self, t):
        return 4.0 if self.mixed else 0.0

    def select(self, t, q):
        return [(self.held_positions(t), None, None)] * self.lv.G


def check_cut(kvsim, trace):
    cases = [  # spec, budget, press_ratio, layerwise, sinks
        ("kvzip:budget=16", 16, None, False, 4),
        ("kvzip:press_ratio=0.6", None, 0.6, False, 4),
        ("kvzip:budget=12,layerwise=1", 12, None, True, 4),
        ("kvzip:budget=10,sinks=0", 10, None, False, 0),
    ]
    with h5py.File(trace, "r") as f:
        L = int(f.attrs["n_layers"])
    for seq in ("whole", "ctx"):
        with h5py.File(trace, "r") as f:
            g = f["sequences"][seq]
            P = int(g.attrs["context_len"]) if "context_len" in g.attrs else int(g.attrs["prefill_len"])
        for spec, B, r, lw, sinks in cases:
            sparse_ref.agree(kvsim, trace, spec,
                             lambda lv: Kvzip(lv, trace, budget=B, press_ratio=r, layerwise=lw, sinks=sinks),
                             stride=5, P=P, seq=seq, protocol="prefill")
        keep = Kvzip.plan(trace, seq, P, 16, None, False, 4)
        per_layer = keep.reshape(L, -1).sum(axis=1)
        print("%s: global kvzip:budget=16 keeps per layer %s (of %d per head x Hkv)" % (seq, per_layer.tolist(), P))
        assert len(set(per_layer.tolist())) > 1, per_layer  # the global cut is uneven across layers here


def main():
    a = lib.parse_args()
    if not os.path.exists(MODEL):
        lib.skip("../shared/models not found")
    import stories260k_torch
    model = stories260k_torch.build()
    tok = Llama2cTokenizer(TOKENIZER)
    tmp = tempfile.mkdtemp(prefix="kvsim_kvzip_")
    try:
        trace = check_scores(a.kvsim, model, tok, tmp)
        check_cut(a.kvsim, trace)
        # The embedded trace's scores of its first 384 tokens (traces/samples/regenerate.sh): the cut at 384.
        embedded = os.path.join(ROOT, "traces", "samples", "stories260K.h5")
        for spec, B, r in (("kvzip:budget=64", 64, None), ("kvzip:press_ratio=0.9,layerwise=1", None, 0.9)):
            sparse_ref.agree(a.kvsim, embedded, spec,
                             lambda lv: Kvzip(lv, embedded, budget=B, press_ratio=r, layerwise=r is not None),
                             stride=9, P=384, protocol="prefill")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("ok")


if __name__ == "__main__":
    main()
