#!/usr/bin/env python3
"""`kvsim record --record vo_norm` on stories260K, checked with h5py and NumPy.

Independent check (float64): every layer's vo_norm [H, T] equals sum_r |(W_o[:, hD:(h+1)D] @ v_i)_r|, the
L1 norm of token i's value (of KV head h // G) carried through query head h's block of o_proj, with W_o
read here from the llama2.c checkpoint by its documented layout (../shared/models/README.md: a header of
7 int32, then fp32 token embedding, rms_att, wq, wk, wv, wo, ...), not by kvsim's loader; v is the
trace's own. For all layers, heads and tokens the relative difference stays below 1e-4 (float32 trace).
A float16 trace's norm was computed from v before v was rounded, then rounded itself: 2^-11 twice, plus
what cancellation in W_o v makes of v's rounding (5e-3 declared; about 8e-4 seen). Skipped (exit 77) when
../shared/models is missing. Run:
    /usr/bin/python3 tests/py/test_vo_norm.py --kvsim build/kvsim
"""
import argparse
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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "..", "shared", "models", "stories260K", "stories260K.bin")


def load_wo(path):
    """The o_proj weights [L, dim, H*D] ([out, in]) of a llama2.c checkpoint, and (H, Hkv)."""
    with open(path, "rb") as f:
        dim, hidden, L, H, Hkv, vocab, seq_len = struct.unpack("<7i", f.read(28))
        data = np.frombuffer(f.read(), dtype="<f4")
    kv_dim = dim * Hkv // H
    off = abs(vocab) * dim + L * dim + L * dim * dim + 2 * L * kv_dim * dim  # embedding, rms_att, wq, wk, wv
    wo = data[off:off + L * dim * dim].reshape(L, dim, dim).astype(np.float64)
    return wo, H, Hkv


def vo_norm_numpy(wo_l, v, H):
    """wo_l [dim, H*D], v [Hkv, T, D] -> [H, T] float64."""
    Hkv, T, D = v.shape
    G = H // Hkv
    out = np.empty((H, T))
    for h in range(H):
        y = v[h // G].astype(np.float64) @ wo_l[:, h * D:(h + 1) * D].T  # [T, dim]
        out[h] = np.abs(y).sum(axis=1)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvsim", required=True)
    kvsim = os.path.abspath(ap.parse_args().kvsim)
    if not os.path.exists(MODEL):
        lib.skip("../shared/models not found")
    wo, H, Hkv = load_wo(MODEL)
    tmp = tempfile.mkdtemp(prefix="kvsim_vo_norm_")
    try:
        for dtype, tol in (("float32", 1e-4), ("float16", 5e-3)):
            out = os.path.join(tmp, dtype + ".h5")
            r = subprocess.run([kvsim, "record", "--model", MODEL, "--prompt", "Lily saw a big dog", "--generate", "60",
                                "--block", "32", "--record", "vo_norm", "--dtype", dtype, "--quiet", "--out", out],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            worst, n = 0.0, 0
            with h5py.File(out, "r") as f:
                seq = f["sequences/0000"]
                T = int(seq.attrs["n_tokens"])
                L = int(f.attrs["n_layers"])
                assert int(f.attrs["n_heads"]) == H and int(f.attrs["n_kv_heads"]) == Hkv
                for l in range(L):
                    ds = seq[f"layers/{l}/vo_norm"]
                    assert ds.shape == (H, T), (ds.shape, H, T)
                    assert ds.dtype == (np.float32 if dtype == "float32" else np.float16), ds.dtype
                    got = ds.astype(np.float32)[...].astype(np.float64)
                    ref = vo_norm_numpy(wo[l], seq[f"layers/{l}/v"].astype(np.float32)[...], H)
                    assert np.all(ref > 0)
                    worst = max(worst, float(np.max(np.abs(got - ref) / ref)))
                    n += got.size
            print(f"{dtype}: vo_norm over {n} (layer, head, token): max relative difference {worst:.3g} (< {tol})")
            assert worst < tol, (dtype, worst)
        # without --record vo_norm there is no such dataset
        out = os.path.join(tmp, "plain.h5")
        subprocess.run([kvsim, "record", "--model", MODEL, "--prompt", "Lily", "--quiet", "--out", out], check=True)
        with h5py.File(out, "r") as f:
            assert "vo_norm" not in f["sequences/0000/layers/0"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("ok")


if __name__ == "__main__":
    main()
