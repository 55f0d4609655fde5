"""h5py reads a trace written by kvsim exactly as traces/FORMAT.md describes.

Expected values are derived independently of kvsim's C++ conversion code: float16 files must hold
numpy's float16 rounding of the float32 file's values; bfloat16 files must hold the nearer of the
two bfloat16 neighbours of each float32 value (ties to even), computed here with numpy.
"""
import os
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from kvsim_testlib import Suite, parse_args, run, tempdir  # noqa: E402

ROOT_ATTRS = {
    "format": str, "format_version": np.integer, "model": str, "architecture": str, "n_layers": np.integer,
    "n_heads": np.integer, "n_kv_heads": np.integer, "head_dim": np.integer, "vocab_size": np.integer,
    "rope_theta": np.floating, "rope_style": str, "stored_dtype": str, "recorder": str, "device": str,
    "synthetic": np.integer, "created": str, "complete": np.integer,
}


def bf16_nearest(x32):
    u = x32.view(np.uint32)
    lo = (u & np.uint32(0xFFFF0000)).view(np.float32).astype(np.float64)
    hi = ((u & np.uint32(0xFFFF0000)) + np.uint32(0x10000)).view(np.float32).astype(np.float64)
    x = x32.astype(np.float64)
    dlo, dhi = np.abs(x - lo), np.abs(x - hi)
    lo_even = ((u >> np.uint32(16)) & np.uint32(1)) == 0
    pick_lo = (dlo < dhi) | ((dlo == dhi) & lo_even)
    return np.where(pick_lo, lo, hi).astype(np.float32)


def main():
    args = parse_args()
    s = Suite()
    with tempdir() as d:
        paths = {}
        for dt in ("float32", "float16", "bfloat16"):
            paths[dt] = os.path.join(d, f"t-{dt}.h5")
            r = run([args.kvsim, "synth", "--shape", "tiny", "--tokens", "300", "--seed", "9", "--sequences", "2",
                     "--dtype", dt, "--pre", "--out", paths[dt], "--quiet"])
            assert r.returncode == 0, r.stderr

        def root_attributes():
            with h5py.File(paths["float32"], "r") as f:
                for name, typ in ROOT_ATTRS.items():
                    assert name in f.attrs, f"missing root attribute {name}"
                    v = f.attrs[name]
                    assert isinstance(v, typ), f"{name}: {type(v)} is not {typ}"
                assert f.attrs["format"] == "kvtrace" and f.attrs["format_version"] == 1
                assert f.attrs["complete"] == 1 and f.attrs["synthetic"] == 1
                assert (f.attrs["n_layers"], f.attrs["n_heads"], f.attrs["n_kv_heads"], f.attrs["head_dim"]) == (2, 4, 2, 16)
                assert f.attrs["stored_dtype"] == "float32"

        def sequences_and_shapes():
            with h5py.File(paths["float32"], "r") as f:
                names = sorted(f["sequences"].keys())
                assert names == ["0000", "0001"], names
                for n in names:
                    g = f["sequences"][n]
                    T = int(g.attrs["n_tokens"])
                    assert T == 300 and int(g.attrs["prefill_len"]) == 150
                    assert g["tokens"].shape == (T,) and g["tokens"].dtype == np.int32
                    for l in range(2):
                        L = g["layers"][str(l)]
                        assert L["q"].shape == (4, T, 16) and L["k"].shape == (2, T, 16) and L["v"].shape == (2, T, 16)
                        assert L["q_pre"].shape == (4, T, 16) and L["k_pre"].shape == (2, T, 16)
                        assert L["k"].chunks == (1, 256, 16), L["k"].chunks
                        assert L["k"].dtype == np.float32

        def float16_is_numpy_rounding():
            with h5py.File(paths["float32"], "r") as f32, h5py.File(paths["float16"], "r") as f16:
                assert f16.attrs["stored_dtype"] == "float16"
                for l in range(2):
                    for kind in ("q", "k", "v", "q_pre", "k_pre"):
                        ref = f32[f"sequences/0001/layers/{l}/{kind}"][...]
                        ds = f16[f"sequences/0001/layers/{l}/{kind}"]
                        assert ds.dtype.itemsize == 2
                        got = ds.astype(np.float32)[...]  # FORMAT.md's way to read any stored dtype
                        want = ref.astype(np.float16).astype(np.float32)
                        assert np.array_equal(got, want), f"{kind} layer {l}: max diff {np.abs(got - want).max()}"

        def bfloat16_is_nearest():
            with h5py.File(paths["float32"], "r") as f32, h5py.File(paths["bfloat16"], "r") as fb:
                assert fb.attrs["stored_dtype"] == "bfloat16"
                for kind in ("q", "k", "v"):
                    ref = f32[f"sequences/0000/layers/1/{kind}"][...]
                    ds = fb[f"sequences/0000/layers/1/{kind}"]
                    assert ds.dtype.itemsize in (2, 4)
                    got = ds.astype(np.float32)[...]
                    want = bf16_nearest(ref)
                    assert np.array_equal(got, want), f"{kind}: max diff {np.abs(got - want).max()}"

        def info_json_agrees():
            import json
            r = run([args.kvsim, "info", paths["bfloat16"], "--json"])
            assert r.returncode == 0, r.stderr
            j = json.loads(r.stdout)
            assert j["stored_dtype"] == "bfloat16" and j["n_layers"] == 2 and len(j["sequences"]) == 2
            assert j["sequences"][0]["tensors"] == ["q", "k", "v", "q_pre", "k_pre"]

        def compressed_is_gzip_shuffle():
            p = os.path.join(d, "z.h5")
            r = run([args.kvsim, "synth", "--shape", "tiny", "--tokens", "300", "--seed", "9", "--compress", "--out", p, "--quiet"])
            assert r.returncode == 0, r.stderr
            with h5py.File(p, "r") as f, h5py.File(paths["float32"], "r") as ref:
                ds = f["sequences/0000/layers/0/k"]
                assert ds.compression == "gzip" and ds.shuffle
                assert np.array_equal(ds[...], ref["sequences/0000/layers/0/k"][...])

        s.check("root attributes have the documented names and types", root_attributes)
        s.check("sequences, dataset shapes and chunks", sequences_and_shapes)
        s.check("float16 trace = numpy float16 rounding of the float32 trace", float16_is_numpy_rounding)
        s.check("bfloat16 trace = nearest bfloat16 (ties to even) of the float32 trace", bfloat16_is_nearest)
        s.check("kvsim info --json agrees with the file", info_json_agrees)
        s.check("--compress writes gzip + shuffle with identical values", compressed_is_gzip_shuffle)
    s.finish()


if __name__ == "__main__":
    main()
