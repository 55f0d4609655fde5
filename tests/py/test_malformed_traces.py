"""Malformed traces: each must give exactly one line on stderr that names the file, the dataset or
attribute at fault and the numbers involved, and exit code 2 (never a crash; the CI runs this
against the ASan+UBSan build too). Each file is a valid trace from `kvsim synth` damaged with h5py
(or truncated/replaced as bytes)."""
import os
import shutil
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from kvsim_testlib import Suite, parse_args, run, tempdir  # noqa: E402

SEQ = "sequences/0000"


def set_attr(path, value, obj="/"):
    def f(h):
        h[obj].attrs[path] = value
    return f


def del_attr(name, obj="/"):
    def f(h):
        del h[obj].attrs[name]
    return f


def replace_dataset(name, data=None, shape=None, dtype=None, **kw):
    def f(h):
        del h[name]
        if data is not None:
            h.create_dataset(name, data=data, **kw)
        else:
            h.create_dataset(name, shape=shape, dtype=dtype, **kw)
    return f


def poke(name, index, value):
    def f(h):
        a = h[name][...]
        a[index] = value
        h[name][...] = a
    return f


def combine(*fs):
    def f(h):
        for g in fs:
            g(h)
    return f


# (case name, mutation, extra kvsim args, substrings the one-line message must contain)
CASES = [
    ("missing root attribute", del_attr("n_layers"), [], ["missing attribute 'n_layers'"]),
    ("attribute of the wrong class", set_attr("n_heads", "four"), [], ["'n_heads' is string, expected integer"]),
    ("unknown format", set_attr("format", "kvtrace-x"), [], ["format = 'kvtrace-x'"]),
    ("future version", set_attr("format_version", 2), [], ["format_version = 2", "reads version 1"]),
    ("incomplete (complete = 0)", set_attr("complete", 0), [], ["complete = 0"]),
    ("n_heads not a multiple of n_kv_heads", set_attr("n_kv_heads", 3), [], ["n_heads = 4", "n_kv_heads = 3"]),
    ("unknown stored_dtype", set_attr("stored_dtype", "float8"), [], ["stored_dtype = 'float8'"]),
    ("k shape disagrees with n_kv_heads", replace_dataset(f"{SEQ}/layers/1/k", data=np.zeros((3, 40, 16), np.float32)),
     [], ["/sequences/0000/layers/1/k", "[3, 40, 16]", "n_kv_heads = 2"]),
    ("q token count disagrees with n_tokens", replace_dataset(f"{SEQ}/layers/0/q", data=np.zeros((4, 39, 16), np.float32)),
     [], ["/sequences/0000/layers/0/q", "[4, 39, 16]", "n_tokens = 40"]),
    ("head_dim disagrees", set_attr("head_dim", 8), [], ["/sequences/0000/layers/0/q", "[4, 40, 16]", "head_dim = 8"]),
    ("missing layer", lambda h: h.__delitem__(f"{SEQ}/layers/1"), [], ["/sequences/0000/layers/1", "layer missing", "n_layers = 2"]),
    ("extra layer", lambda h: h.copy(h[f"{SEQ}/layers/1"], f"{SEQ}/layers/2"), [], ["layers/2", "n_layers = 2"]),
    ("missing v in one layer", lambda h: h.__delitem__(f"{SEQ}/layers/0/v"), [], ["/sequences/0000/layers/0/v", "missing"]),
    ("wrong dtype class (integer keys)", replace_dataset(f"{SEQ}/layers/0/k", data=np.zeros((2, 40, 16), np.int32)),
     [], ["/sequences/0000/layers/0/k", "dtype class integer, expected float"]),
    ("float64 where stored_dtype = float32", replace_dataset(f"{SEQ}/layers/0/v", data=np.zeros((2, 40, 16), np.float64)),
     [], ["/sequences/0000/layers/0/v", "8-byte floats", "stored_dtype = float32"]),
    ("zero tokens", set_attr("n_tokens", 0, SEQ), [], ["/sequences/0000", "n_tokens = 0"]),
    ("prefill longer than the sequence", set_attr("prefill_len", 41, SEQ), [], ["prefill_len = 41", "n_tokens = 40"]),
    ("declared tokens that would exhaust memory",
     combine(set_attr("n_tokens", 2 ** 40, SEQ),
             replace_dataset(f"{SEQ}/layers/0/q", shape=(4, 2 ** 40, 16), dtype=np.float32, chunks=(1, 256, 16))),
     [], ["n_tokens = 1099511627776", "exceeds the limit"]),
    ("declared layers that would exhaust memory", set_attr("n_layers", 10 ** 9), [], ["n_layers = 1000000000", "outside"]),
    ("tokens dataset missing", lambda h: h.__delitem__(f"{SEQ}/tokens"), [], ["/sequences/0000/tokens", "missing"]),
    ("no sequences", lambda h: h.__delitem__(SEQ), [], ["/sequences", "no sequences"]),
    ("NaN in keys (found by --check)", poke(f"{SEQ}/layers/1/k", (1, 17, 4), np.nan), ["--check"],
     ["/sequences/0000/layers/1/k", "1 non-finite", "nan", "head 1, token 17, dim 4"]),
    ("Inf in queries (found by --check)", poke(f"{SEQ}/layers/0/q", (3, 0, 15), np.inf), ["--check"],
     ["/sequences/0000/layers/0/q", "inf", "head 3, token 0, dim 15"]),
]


def main():
    args = parse_args()
    s = Suite()
    with tempdir() as d:
        base = os.path.join(d, "base.h5")
        r = run([args.kvsim, "synth", "--shape", "tiny", "--tokens", "40", "--seed", "2", "--out", base, "--quiet"])
        assert r.returncode == 0, r.stderr
        assert run([args.kvsim, "info", base, "--check"]).returncode == 0

        def expect_one_line_error(path, extra, needles):
            r = run([args.kvsim, "info", path] + extra)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2, f"exit {r.returncode}, stderr {r.stderr!r}"
            assert len(lines) == 1, f"{len(lines)} lines on stderr: {r.stderr!r}"
            msg = lines[0]
            assert path in msg, f"file name missing from {msg!r}"
            for n in needles:
                assert n.lower() in msg.lower(), f"{n!r} missing from {msg!r}"

        for i, (name, mutate, extra, needles) in enumerate(CASES):
            def case(i=i, mutate=mutate, extra=extra, needles=needles):
                p = os.path.join(d, f"case{i:02d}.h5")
                shutil.copy(base, p)
                with h5py.File(p, "r+") as h:
                    mutate(h)
                expect_one_line_error(p, extra, needles)
            s.check(name, case)

        def not_hdf5():
            p = os.path.join(d, "text.h5")
            with open(p, "w") as f:
                f.write("this is not a trace\n" * 20)
            expect_one_line_error(p, [], ["not an HDF5 file", "400 bytes"])

        def empty_file():
            p = os.path.join(d, "empty.h5")
            open(p, "w").close()
            expect_one_line_error(p, [], ["not an HDF5 file", "0 bytes"])

        def truncated():
            p = os.path.join(d, "trunc.h5")
            data = open(base, "rb").read()
            with open(p, "wb") as f:
                f.write(data[: len(data) // 2])
            expect_one_line_error(p, [], ["truncated or corrupt", f"{len(data) // 2} bytes"])

        def truncated_check():
            # Cut inside the raw data, after the metadata: opening may succeed, reading must fail cleanly.
            p = os.path.join(d, "trunc2.h5")
            data = open(base, "rb").read()
            with open(p, "wb") as f:
                f.write(data[: len(data) - 3000])
            r = run([args.kvsim, "info", p, "--check"])
            assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (r.returncode, r.stderr)
            assert p in r.stderr

        def directory():
            expect_one_line_error(d, [], ["is a directory"])

        def missing_file():
            expect_one_line_error(os.path.join(d, "nope.h5"), [], ["no such file"])

        s.check("not HDF5 (text)", not_hdf5)
        s.check("empty file", empty_file)
        s.check("truncated (first half)", truncated)
        s.check("truncated (tail of the data cut off), --check", truncated_check)
        s.check("a directory", directory)
        s.check("a missing file", missing_file)
    s.finish()


if __name__ == "__main__":
    main()
