"""Malformed traces: each must give exactly one line on stderr that names the file, the dataset or
attribute at fault and the numbers involved, and exit code 2 (never a crash; the CI runs this
against the ASan+UBSan build too). Each file is a valid trace from `kvsim synth` damaged with h5py
(or truncated/replaced as bytes). Hostile files too: values that are not finite or too large, data
stored outside the file, sizes the file does not hold, a damaged sidecar (traces/FORMAT.md)."""
import json
import os
import shutil
import sqlite3
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


def outside(kind, name):
    """Replaces dataset `name` (k of layer 1: [2, 40, 16] float32) by the same data held outside the file."""
    def f(h):
        data = h[name][...]
        d = os.path.dirname(h.filename)
        del h[name]
        if kind == "external link":
            with h5py.File(os.path.join(d, "outside.h5"), "w") as o:
                o["k"] = data
            h[name] = h5py.ExternalLink(os.path.join(d, "outside.h5"), "/k")
        elif kind == "soft link":
            h[name] = h5py.SoftLink(f"/{SEQ}/layers/0/k")
        elif kind == "external storage":
            raw = os.path.join(d, "outside.raw")
            data.astype("<f4").tofile(raw)
            h.create_dataset(name, shape=data.shape, dtype="<f4", external=[(raw, 0, data.nbytes)])
        elif kind == "virtual":
            with h5py.File(os.path.join(d, "outside.h5"), "w") as o:
                o["k"] = data
            layout = h5py.VirtualLayout(shape=data.shape, dtype="<f4")
            layout[...] = h5py.VirtualSource(os.path.join(d, "outside.h5"), "k", shape=data.shape)
            h.create_virtual_dataset(name, layout)
    return f


def declare_tokens(T, store_tokens):
    """n_tokens = T with every q, k, v declared [heads, T, 16] in chunks [1, 256, 16] but never
    written (a small file declaring gigabytes); the tokens stored or not."""
    def f(h):
        h[SEQ].attrs["n_tokens"] = T
        h[SEQ].attrs["prefill_len"] = 8
        del h[f"{SEQ}/tokens"]
        t = h.create_dataset(f"{SEQ}/tokens", shape=(T,), dtype=np.int32, chunks=(min(T, 65536),),
                             compression="gzip")
        if store_tokens:
            t[...] = np.zeros(T, np.int32)
        for l in range(2):
            for kind, heads in (("q", 4), ("k", 2), ("v", 2)):
                del h[f"{SEQ}/layers/{l}/{kind}"]
                h.create_dataset(f"{SEQ}/layers/{l}/{kind}", shape=(heads, T, 16), dtype=np.float32,
                                 chunks=(1, 256, 16))
    return f


def huge_chunk(h):
    """One [2, 2^20, 16] float32 chunk (128 MiB inflated) in layer 0's q: refused before any read."""
    T = 2 ** 20
    declare_tokens(T, True)(h)
    del h[f"{SEQ}/layers/0/q"]
    h.create_dataset(f"{SEQ}/layers/0/q", shape=(4, T, 16), dtype=np.float32, chunks=(2, T, 16),
                     compression="gzip")


def some_chunks(h):
    """q of layer 0 in chunks [1, 8, 16] with only head 0's 5 of 20 chunks written."""
    name = f"{SEQ}/layers/0/q"
    data = h[name][...]
    del h[name]
    q = h.create_dataset(name, shape=data.shape, dtype=np.float32, chunks=(1, 8, 16))
    q[0] = data[0]


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
    ("finite 3e38 in values (found by --check)", poke(f"{SEQ}/layers/1/v", (0, 30, 2), 3e38), ["--check"],
     ["/sequences/0000/layers/1/v", "1 non-finite or out-of-range", "3e+38", "head 0, token 30, dim 2"]),
    ("65505 in keys, over the float16 range (found by --check)", poke(f"{SEQ}/layers/0/k", (1, 5, 0), 65505.0),
     ["--check"], ["/sequences/0000/layers/0/k", "65505", "head 1, token 5, dim 0"]),
    ("k of layer 1 through an external link", outside("external link", f"{SEQ}/layers/1/k"), [],
     ["/sequences/0000/layers/1/k", "external link", "hard links only"]),
    ("k of layer 1 through a soft link", outside("soft link", f"{SEQ}/layers/1/k"), [],
     ["/sequences/0000/layers/1/k", "soft link"]),
    ("k of layer 1 in external storage", outside("external storage", f"{SEQ}/layers/1/k"), [],
     ["/sequences/0000/layers/1/k", "external storage in 1 outside file"]),
    ("k of layer 1 a virtual dataset", outside("virtual", f"{SEQ}/layers/1/k"), [],
     ["/sequences/0000/layers/1/k", "virtual dataset"]),
    ("q declared but never written (contiguous)",
     replace_dataset(f"{SEQ}/layers/0/q", shape=(4, 40, 16), dtype=np.float32), [],
     ["/sequences/0000/layers/0/q", "only 0 of the 10240 bytes", "[4, 40, 16]"]),
    ("q with 5 of its 20 chunks written", some_chunks, [],
     ["/sequences/0000/layers/0/q", "only 5 of the 20 chunks", "[4, 40, 16]"]),
    ("T = 2^24 declared in a small file (tokens not stored)", declare_tokens(2 ** 24, False), ["--check"],
     ["/sequences/0000/tokens", "only 0 of the 256 chunks", "[16777216]"]),
    ("T = 2^16 declared, tokens stored, tensors never written", declare_tokens(2 ** 16, True), ["--check"],
     ["/sequences/0000/layers/0/q", "only 0 of the 1024 chunks", "[4, 65536, 16]"]),
    ("one 128 MiB gzip chunk", huge_chunk, [],
     ["/sequences/0000/layers/0/q", "[2, 1048576, 16]", "134217728 bytes", "over the limit 67108864"]),
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

        def mutated(name, mutate, src=base):
            p = os.path.join(d, name)
            shutil.copy(src, p)
            with h5py.File(p, "r+") as h:
                mutate(h)
            return p

        def run_json(trace, *extra):
            r = run([args.kvsim, "run", "--trace", trace, "--strategy", "window:budget=16", "--json", "--quiet",
                     "--stats-cache", "off"] + list(extra))
            return r, (json.loads(r.stdout) if r.returncode == 0 else None)

        def expect_run_refused(trace, needles, *extra):
            r, _ = run_json(trace, *extra)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stderr)
            for n in [trace] + needles:
                assert n.lower() in lines[0].lower(), f"{n!r} missing from {lines[0]!r}"

        def nan_refused_by_run():
            # Before: exit 0 with nan metrics. The replay reads layer 1 after layer 0: the message
            # names the dataset (layer), the head and the position.
            p = mutated("nan_run.h5", poke(f"{SEQ}/layers/1/k", (1, 17, 4), np.nan))
            expect_run_refused(p, ["/sequences/0000/layers/1/k", "value nan", "head 1, token 17, dim 4",
                                   "|x| <= 65504"])

        def huge_finite_refused_by_run():
            # Before: 3e38 passed and mass came out inf.
            p = mutated("big_run.h5", poke(f"{SEQ}/layers/0/q", (2, 33, 7), 3e38))
            expect_run_refused(p, ["/sequences/0000/layers/0/q", "value 3e+38", "head 2, token 33, dim 7"])

        def float16_inf_refused_by_run():
            b16 = os.path.join(d, "base16.h5")
            r = run([args.kvsim, "synth", "--shape", "tiny", "--tokens", "40", "--seed", "2", "--dtype", "float16",
                     "--out", b16, "--quiet"])
            assert r.returncode == 0, r.stderr
            p = mutated("inf16.h5", poke(f"{SEQ}/layers/0/v", (0, 39, 15), -np.inf), b16)
            expect_run_refused(p, ["/sequences/0000/layers/0/v", "value -inf", "head 0, token 39, dim 15"])

        def bound_itself_accepted():
            # |x| = 65504 (the largest float16) is a valid value; every metric stays finite.
            p = mutated("bound.h5", combine(poke(f"{SEQ}/layers/0/q", (0, 30, 0), 65504.0),
                                            poke(f"{SEQ}/layers/0/k", (0, 3, 0), -65504.0)))
            assert run([args.kvsim, "info", p, "--check"]).returncode == 0
            r, j = run_json(p)
            assert r.returncode == 0, r.stderr
            for m, v in j["results"][0]["summary"].items():
                assert all(x is not None and np.isfinite(x) for x in v.values()), (m, v)

        def nan_sweep_records_failed():
            # Before: the store marked the run done with NULL means and best ranked it.
            p = mutated("nan_sweep.h5", poke(f"{SEQ}/layers/0/k", (0, 20, 1), np.nan))
            cfg = os.path.join(d, "nan.yaml")
            with open(cfg, "w") as f:
                f.write(f"name: nan\ntraces: [{p}]\nstrategies:\n  - name: window\n    grid: {{budget: [8, 16]}}\n")
            db = os.path.join(d, "nan.db")
            r = run([args.kvsim, "sweep", cfg, "--db", db, "--quiet", "--stats-cache", "off"])
            assert r.returncode == 1, (r.returncode, r.stderr)
            with sqlite3.connect(db) as c:
                rows = c.execute("SELECT status, error FROM runs").fetchall()
                n_sum = c.execute("SELECT count(*) FROM summaries").fetchone()[0]
            assert len(rows) == 2 and all(st == "failed" for st, _ in rows), rows
            assert all("/sequences/0000/layers/0/k" in e and "head 0, token 20, dim 1" in e for _, e in rows), rows
            assert n_sum == 0, n_sum
            r = run([args.kvsim, "best", "--db", db, "--metric", "kl", "--max-ratio", "1"])
            assert r.returncode == 2 and "no finished runs" in r.stderr, (r.returncode, r.stderr)

        def partial_refused():
            # A kill between complete = 1 and the rename leaves a complete-looking NAME.h5.partial.
            p = os.path.join(d, "left.h5.partial")
            shutil.copy(base, p)
            expect_one_line_error(p, [], [".partial file", "being written"])
            expect_run_refused(p, [".partial file"])

        def max_memory():
            # One layer of tiny (H = 4, Hkv = 2, T = 40, D = 16): q, k, v as float32,
            # 4·40·16·(4 + 2·2) = 20480 bytes, plus the reference statistics per query head and step:
            # o (4·16) + lse (8) + entropy (4) + 32 top-k positions and weights (8·32) bytes,
            # 4·40·(64 + 8 + 4 + 256) = 53120 bytes: 73600 in all.
            r, _ = run_json(base, "--max-memory", "73600")
            assert r.returncode == 0, r.stderr
            expect_run_refused(base, ["holds 73600 bytes", "over --max-memory 73599", "T = 40"],
                               "--max-memory", "73599")
            r, _ = run_json(base, "--max-memory", "1M")
            assert r.returncode == 0, r.stderr
            for bad in ["0", "-5", "1.5G", "8X", "", "99999999999T"]:
                r, _ = run_json(base, "--max-memory", bad)
                assert r.returncode == 2 and "--max-memory" in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
                    (bad, r.returncode, r.stderr)

        def sidecar_damage():
            # The sidecar of the reference statistics (sim/stats_cache.h): header 80 bytes, then layer 0:
            # o [4, 40, 16] f32 (10240 bytes), lse [4, 40] f64 (1280), entropy [4, 40] f32 (640),
            # top_pos [4, 40, 32] i32 from byte 80 + 12160 = 12240.
            cache = os.path.join(d, "cache")
            spec = ["run", "--trace", base, "--strategy", "h2o:budget=12", "--json", "--quiet", "--stats-cache", cache]
            r = run([args.kvsim] + spec)
            assert r.returncode == 0, r.stderr
            want = json.loads(r.stdout)["results"]
            files = [f for f in os.listdir(cache) if f.endswith(".kvstats")]
            assert len(files) == 1, files
            side = os.path.join(cache, files[0])
            good = open(side, "rb").read()
            top_pos0 = 80 + 10240 + 1280 + 640
            # step t = 39 of head 0 has 32 valid positions in [0, 39]
            row39 = top_pos0 + 4 * 32 * 39
            assert int(np.frombuffer(good[row39:row39 + 4], "<i4")[0]) in range(40)
            damages = {
                "top-k position out of range": (row39, np.array([1 << 30], "<i4").tobytes(), "top-k position 1073741824"),
                "a finite output changed": (80 + 4 * 100, np.array([0.123], "<f4").tobytes(), "checksum mismatch"),
                "a NaN output": (80, np.array([np.nan], "<f4").tobytes(), "output nan"),
                "a cut-off tail": (None, None, "its size is"),
            }
            for what, (off, data, needle) in damages.items():
                with open(side, "wb") as f:
                    f.write(good[: len(good) - 100] if off is None else good[:off] + data + good[off + len(data):])
                r = run([args.kvsim] + spec)
                assert r.returncode == 0, (what, r.returncode, r.stderr)
                assert "invalid sidecar" in r.stderr and needle in r.stderr, (what, r.stderr)
                assert len(r.stderr.strip().splitlines()) == 1, (what, r.stderr)
                assert json.loads(r.stdout)["results"] == want, what
                assert open(side, "rb").read() == good, f"{what}: the sidecar was not rebuilt as it was"
                r = run([args.kvsim] + spec)  # the rebuilt sidecar is valid and used silently
                assert r.returncode == 0 and "sidecar" not in r.stderr, (what, r.stderr)

        s.check("NaN in keys refused by run (dataset, head, position)", nan_refused_by_run)
        s.check("finite 3e38 refused by run", huge_finite_refused_by_run)
        s.check("-inf in a float16 trace refused by run", float16_inf_refused_by_run)
        s.check("|x| = 65504 accepted, metrics finite", bound_itself_accepted)
        s.check("NaN trace in a sweep: runs failed, nothing stored, best ranks nothing", nan_sweep_records_failed)
        s.check("a complete .partial refused by name", partial_refused)
        s.check("--max-memory bounds one layer of the replay", max_memory)
        s.check("damaged sidecar rebuilt, saying so", sidecar_damage)
        s.check("not HDF5 (text)", not_hdf5)
        s.check("empty file", empty_file)
        s.check("truncated (first half)", truncated)
        s.check("truncated (tail of the data cut off), --check", truncated_check)
        s.check("a directory", directory)
        s.check("a missing file", missing_file)
    s.finish()


if __name__ == "__main__":
    main()
