#!/usr/bin/env python3
"""Hostile inputs through the binary: FIFOs and directories where files are read, newlines in user
text, hostile sweep grids, integer extremes in specs, a corrupted global heap (the trace's string
attributes) and the smaller usage holes. Each must give one line on stderr and exit 2, within a
timeout that the test itself enforces (a hang fails the case instead of hanging ctest)."""
import json
import os
import resource
import struct
import subprocess
import sys

import h5py

sys.path.insert(0, os.path.dirname(__file__))
from kvsim_testlib import Suite, one_line_error, parse_args, sanitized, tempdir  # noqa: E402

TIMEOUT = 30


def limit_memory():
    # 2 GiB of address space: a grid that is expanded before it is counted runs out here (exit 1)
    # instead of taking the machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def kv(k, *args, memory_cap=False):
    env = None
    if memory_cap and sanitized(k):  # ASan cannot run under RLIMIT_AS: its own 2 GiB RSS limit instead
        env = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":hard_rss_limit_mb=2048")
    try:
        return subprocess.run([k, *args], capture_output=True, text=True, errors="replace", timeout=TIMEOUT,
                              env=env, preexec_fn=limit_memory if memory_cap and env is None else None)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"kvsim {' '.join(args)}: still running after {TIMEOUT} s (a hang)")


def main():
    a = parse_args()
    k = a.kvsim
    s = Suite()
    with tempdir() as d:
        trace = os.path.join(d, "t.h5")
        subprocess.run([k, "synth", "--shape", "tiny", "--tokens", "40", "--seed", "1", "--out", trace, "--quiet"],
                       check=True)
        fifo = os.path.join(d, "pipe")
        os.mkfifo(fifo)
        link = os.path.join(d, "link.h5")
        os.symlink(fifo, link)

        def path(name, text):
            p = os.path.join(d, name)
            with open(p, "w") as f:
                f.write(text)
            return p

        # --- FIFOs and directories (item 6) ---
        s.check("a FIFO as the trace of info", lambda: one_line_error(kv(k, "info", fifo), "FIFO", "not a regular file"))
        s.check("a link to a FIFO as the trace of run", lambda: one_line_error(
            kv(k, "run", "--trace", link, "--strategy", "window:budget=8"), "FIFO"))
        s.check("a FIFO as the sweep config", lambda: one_line_error(kv(k, "sweep", fifo, "--db",
                                                                          os.path.join(d, "f.db")), "FIFO"))
        cfg = path("ok.yaml", f"traces: [{trace}]\nstrategies: [{{name: full}}]\n")
        s.check("a FIFO as the results store", lambda: one_line_error(kv(k, "sweep", cfg, "--db", fifo), "FIFO"))
        s.check("a directory as the results store", lambda: one_line_error(kv(k, "sweep", cfg, "--db", d),
                                                                           "is a directory"))
        s.check("a FIFO as the llama2.c model", lambda: one_line_error(
            kv(k, "generate", "--model", fifo, "--prompt", "1 2", "--ids", "--steps", "1"), "FIFO"))
        s.check("a FIFO as the tokenizer", lambda: one_line_error(
            kv(k, "generate", "--model", fifo, "--tokenizer", fifo, "--prompt", "a", "--steps", "1"), "FIFO"))
        hf = os.path.join(d, "hf")
        os.mkdir(hf)
        os.mkfifo(os.path.join(hf, "config.json"))
        s.check("a FIFO as a model's config.json", lambda: one_line_error(
            kv(k, "generate", "--model", hf, "--prompt", "1 2", "--ids", "--steps", "1"), "FIFO"))
        s.check("a FIFO as --prompts", lambda: one_line_error(
            kv(k, "record", "--model", fifo, "--prompts", fifo, "--out", os.path.join(d, "r.h5")), "FIFO"))

        # --- one line whatever the user typed (item 7) ---
        s.check("a newline in a spec stays on one line", lambda: one_line_error(
            kv(k, "run", "--trace", trace, "--strategy", "h2o\n:budget=8"), "h2o\\n"))
        named = os.path.join(d, "named.h5")
        subprocess.run([k, "synth", "--shape", "tiny", "--tokens", "40", "--seed", "1", "--out", named, "--quiet"],
                       check=True)
        with h5py.File(named, "r+") as h:
            h.move("sequences/0000", "sequences/a\nb")
        s.check("a newline in a sequence name stays on one line", lambda: one_line_error(
            kv(k, "run", "--trace", named, "--strategy", "window:budget=8", "--prefill", "999"), "a\\nb", named))

        # --- sweep grids (item 9) ---
        def grid(name, body):
            return path(name, f"traces: [{trace}]\nstrategies:\n{body}")
        thousand = "{from: 1, to: 1000, step: 1}"
        s.check("an anchor reused on three axes is counted before it is expanded", lambda: one_line_error(
            kv(k, "sweep", grid("a.yaml", f"  - name: h2o\n    grid: {{budget: &x {thousand}, sinks: *x, recent: *x}}\n"),
               "--db", os.path.join(d, "a.db"), memory_cap=True), "a.yaml:", "over 1000000 configurations"))
        entries = "".join(f"  - name: h2o\n    grid: {{budget: {{from: 1, to: 100000, step: 1}}, sinks: [{i}, {i + 20}]}}\n"
                          for i in range(6))
        s.check("the total over entries is capped", lambda: one_line_error(
            kv(k, "sweep", grid("t.yaml", entries), "--db", os.path.join(d, "t.db"), memory_cap=True),
            "t.yaml:", "the strategies expand to over 1000000"))
        s.check("a duplicate key is refused", lambda: one_line_error(
            kv(k, "sweep", grid("d.yaml", "  - name: h2o\n    grid: {budget: [8], budget: [16]}\n"),
               "--db", os.path.join(d, "d.db")), "d.yaml:4:", "'budget' is given twice"))
        s.check("a duplicate top-level key is refused", lambda: one_line_error(
            kv(k, "sweep", path("d2.yaml", f"traces: [{trace}]\nstride: 2\nstride: 4\nstrategies: [{{name: full}}]\n"),
               "--db", os.path.join(d, "d2.db")), "d2.yaml:3:", "'stride' is given twice"))
        for what, rng, needle in [("nan", "{from: nan, to: 1, num: 3}", "not finite"),
                                  ("inf", "{from: 0.1, to: inf, step: 0.1}", "not finite"),
                                  ("a tiny step", "{from: 0, to: 1, step: 1e-300}", "values (limit 100000)"),
                                  ("an overflowing span", "{from: -1e308, to: 1e308, num: 3}", "not finite"),
                                  ("huge integers", "{from: 0, to: 99999999999999999999, step: 99999999999999999}",
                                   "+-2^53")]:
            s.check(f"a range with {what} is refused", lambda rng=rng, needle=needle: one_line_error(
                kv(k, "sweep", grid("r.yaml", f"  - name: h2o\n    grid: {{ratio: {rng}}}\n"),
                   "--db", os.path.join(d, "r.db")), "r.yaml:", needle))
        s.check("an empty codec list is refused", lambda: one_line_error(
            kv(k, "sweep", grid("c.yaml", "  - name: h2o\n    grid: {budget: [8]}\n    codecs: []\n"),
               "--db", os.path.join(d, "c.db")), "c.yaml:", "empty list"))

        # --- integer extremes (item 8) and small holes (item 16) ---
        s.check("budget=INT64_MAX is refused", lambda: one_line_error(
            kv(k, "run", "--trace", trace, "--strategy", "h2o:budget=9223372036854775807"), "must be in [1, 2147483647]"))

        def huge_budget_equals_full():
            r = kv(k, "run", "--trace", trace, "--strategy", "full", "--strategy", "h2o:budget=2147483647", "--json", "--quiet")
            assert r.returncode == 0, r.stderr
            res = json.loads(r.stdout)["results"]
            full = [x for x in res if x["strategy"] == "full"][0]["summary"]
            h2o = [x for x in res if x["strategy"] == "h2o"][0]["summary"]
            # A budget above T never evicts: attention is full's, so these metrics equal full's.
            for m in ("mass", "kl", "out_cos"):
                assert h2o[m]["mean"] == full[m]["mean"], (m, h2o[m], full[m])
            # The ratio counts h2o's score state as allocated for B + 1 slots (STRATEGIES.md): large,
            # but positive and finite (it was -2e16 from an overflow, which `best` then picked).
            assert 1.0 <= h2o["ratio"]["mean"] < float("inf"), h2o["ratio"]
        s.check("budget=2^31-1 runs as full (ratio positive, not -2e16)", huge_budget_equals_full)
        s.check("h2o:budget=16+ is refused", lambda: one_line_error(
            kv(k, "run", "--trace", trace, "--strategy", "h2o:budget=16+"), "nothing after '+'"))
        s.check("streaming:prefix=-1 is refused", lambda: one_line_error(
            kv(k, "run", "--trace", trace, "--strategy", "streaming:budget=16,prefix=-1"), "prefix=-1 must be in [0, 1]"))
        s.check("synth --prefill -5 is refused", lambda: one_line_error(
            kv(k, "synth", "--shape", "tiny", "--tokens", "40", "--prefill", "-5", "--out", os.path.join(d, "p.h5"))))
        s.check("the prefill error names the trace", lambda: one_line_error(
            kv(k, "run", "--trace", trace, "--strategy", "window:budget=8", "--prefill", "40"), trace, "sequence 0000"))
        s.check("--out '' is refused", lambda: one_line_error(
            kv(k, "synth", "--shape", "tiny", "--tokens", "40", "--out", ""), "--out is empty"))
        s.check("--out DIR --force is refused and the directory kept", lambda: (one_line_error(
            kv(k, "synth", "--shape", "tiny", "--tokens", "40", "--out", hf, "--force"), "is a directory"),
            os.path.isdir(hf) or (_ for _ in ()).throw(AssertionError("directory gone"))))

        def damaged_store():
            db = os.path.join(d, "good.db")
            r = kv(k, "sweep", cfg, "--db", db, "--quiet")
            assert r.returncode == 0, r.stderr
            data = bytearray(open(db, "rb").read())
            for i in range(100, len(data), 7):  # past the 100-byte header: pages damaged, header intact
                data[i] ^= 0x5A
            bad = os.path.join(d, "bad.db")
            open(bad, "wb").write(data)
            r = kv(k, "best", "--db", bad, "--metric", "kl", "--max-ratio", "1")
            one_line_error(r)
        s.check("a damaged store is bad input (exit 2)", damaged_store)

        def non_utf8_json():
            p = os.path.join(d, "u.h5")
            subprocess.run([k, "synth", "--shape", "tiny", "--tokens", "40", "--out", p, "--quiet"], check=True)
            with h5py.File(p, "r+") as h:
                h.attrs["model"] = b"caf\xe9"  # latin-1, not UTF-8 (a fixed-length byte string)
            r = kv(k, "info", p, "--json")
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["model"] == "caf\ufffd", r.stdout
        s.check("info --json on a non-UTF-8 attribute", non_utf8_json)

        # --- one bit flip in the global heap of the string attributes (item 4) ---
        def heap_flips():
            data = open(trace, "rb").read()
            g = data.find(b"GCOL\x01\x00\x00\x00")
            assert g >= 0, "no global heap in the trace"
            m = os.path.join(d, "m.h5")
            # The collection's size (bytes 8..15) and the first object's size (bytes 24..31): the
            # library trusts both (an overrun at 0x1000, an endless loop at 0x100).
            for off, val in [(8, 0x20), (8, 0x7FFFFFFF), (24, 0x100), (24, 0x1000), (24, 0x7FFFFFFF)]:
                b = bytearray(data)
                b[g + off:g + off + 8] = struct.pack("<Q", val)
                open(m, "wb").write(b)
                r = kv(k, "info", m)
                one_line_error(r, "global heap collection at offset")
        s.check("a corrupted global heap is refused, not followed", heap_flips)

        # --- a damaged variable-length string type (fuzz finding, tests/fuzz/regressions/trace/) ---
        def vlen_char_size():
            data = open(trace, "rb").read()
            i = data.find(b"stored_dtype\0\0\0\0")
            # The attribute message: its name padded to 16 bytes, then the datatype: variable-length
            # string (class 9, 4 bytes) of size 16 (4 bytes), whose base type (4 bytes of class) has
            # its size at +28: 1 in a sound file. HDF5 1.10 allocates length x that size and fills it
            # (2788425729, the fuzzer's value: 19.5 GB resident for the 7 characters of "float16").
            assert i >= 0 and data[i + 16] == 0x19 and data[i + 28:i + 32] == struct.pack("<I", 1)
            m = os.path.join(d, "v.h5")
            for val in (2788425729, 2, 0x7FFFFFFF):
                b = bytearray(data)
                b[i + 28:i + 32] = struct.pack("<I", val)
                open(m, "wb").write(b)
                for cmd in (["info", m], ["info", "--check", m]):
                    r = kv(k, *cmd, memory_cap=True)
                    one_line_error(r, f"attribute 'stored_dtype': a variable-length string of {val}-byte characters")
        s.check("a variable-length string type with a damaged character size is refused before the library reads it",
                vlen_char_size)
    s.finish()


if __name__ == "__main__":
    main()
