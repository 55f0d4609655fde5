#!/usr/bin/env python3
"""Bad model inputs give one line on stderr and exit code 2 (issue 3 acceptance).

Builds its own tiny llama2.c checkpoint (struct only, no shared weights needed), converts it with
`kvsim convert`, then corrupts copies: missing and truncated weights, a header that disagrees with
the file size, safetensors headers that lie about offsets and dtypes, an unknown architecture, a
prompt longer than the context and an out-of-vocabulary id. Run:
    /usr/bin/python3 tests/py/test_model_errors.py --kvsim build/kvsim
"""
import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ = 8, 16, 1, 2, 1, 300, 16


def tiny_llama2c(path):
    """A valid llama2.c checkpoint with seeded random weights."""
    rng = random.Random(7)
    kv = DIM * KV_HEADS // HEADS
    hd = DIM // HEADS
    n = (VOCAB * DIM + LAYERS * DIM + LAYERS * DIM * DIM + 2 * LAYERS * kv * DIM + LAYERS * DIM * DIM
         + LAYERS * DIM + 3 * LAYERS * HIDDEN * DIM + DIM + SEQ * hd)
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ))
        f.write(struct.pack("<%df" % n, *[rng.gauss(0, 0.1) for _ in range(n)]))


def read_st(path):
    with open(path, "rb") as f:
        b = f.read()
    (n,) = struct.unpack("<Q", b[:8])
    return json.loads(b[8:8 + n]), b[8 + n:]


def write_st(path, header, data, header_len=None):
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h) if header_len is None else header_len))
        f.write(h)
        f.write(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvsim", required=True)
    kvsim = os.path.abspath(ap.parse_args().kvsim)
    failures = []
    tmp = tempfile.mkdtemp(prefix="kvsim_model_errors_")

    def run(args):
        return subprocess.run([kvsim] + args, capture_output=True, text=True, timeout=60)

    def expect_error(name, args, needle):
        r = run(args)
        err = r.stderr.rstrip("\n")
        ok = r.returncode == 2 and err.count("\n") == 0 and err.startswith("kvsim: error:") and needle in err
        print("%-34s %s  exit %d  %s" % (name, "ok  " if ok else "FAIL", r.returncode, err))
        if not ok:
            failures.append(name)

    try:
        good = os.path.join(tmp, "tiny.bin")
        tiny_llama2c(good)
        r = run(["generate", "--model", good, "--ids", "--prompt", "1 5 7", "--steps", "4", "--quiet"])
        assert r.returncode == 0, r.stderr
        assert len(r.stdout.split()) == 4, r.stdout

        expect_error("missing weights", ["generate", "--model", os.path.join(tmp, "nope.bin"), "--ids",
                                         "--prompt", "1"], "not found")
        size = os.path.getsize(good)
        trunc = os.path.join(tmp, "trunc.bin")
        with open(good, "rb") as f, open(trunc, "wb") as g:
            g.write(f.read(size - 100))
        expect_error("truncated weights", ["generate", "--model", trunc, "--ids", "--prompt", "1"], "truncated")
        with open(trunc, "wb") as g:
            g.write(open(good, "rb").read(20))
        expect_error("truncated header", ["generate", "--model", trunc, "--ids", "--prompt", "1"], "header")
        lying = os.path.join(tmp, "lying.bin")
        with open(good, "rb") as f, open(lying, "wb") as g:
            b = bytearray(f.read())
            struct.pack_into("<i", b, 4, HIDDEN * 2)  # hidden_dim doubled: the file is now too short
            g.write(b)
        expect_error("header vs file size", ["generate", "--model", lying, "--ids", "--prompt", "1"],
                     "header implies")
        with open(good, "rb") as f, open(lying, "wb") as g:
            b = bytearray(f.read())
            struct.pack_into("<i", b, 12, 3)  # n_heads = 3 does not divide dim = 8
            g.write(b)
        expect_error("inconsistent header", ["generate", "--model", lying, "--ids", "--prompt", "1"], "n_heads")

        expect_error("prompt longer than context", ["generate", "--model", good, "--ids", "--prompt",
                                                    " ".join(["5"] * (SEQ + 1))], "context")
        expect_error("out-of-vocabulary id", ["generate", "--model", good, "--ids", "--prompt", "1 %d" % VOCAB],
                     "outside the vocabulary")
        expect_error("record: out-of-vocabulary id", ["record", "--model", good, "--ids", "--prompt", "1 999",
                                                      "--out", os.path.join(tmp, "x.h5")], "outside the vocabulary")
        expect_error("record: too long to generate", ["record", "--model", good, "--ids", "--prompt", "1 2 3",
                                                      "--generate", str(SEQ), "--out", os.path.join(tmp, "y.h5")],
                     "context")
        assert not os.path.exists(os.path.join(tmp, "y.h5.partial")), "partial trace left behind"

        expect_error("no tokenizer for a text prompt", ["generate", "--model", good, "--prompt", "hi"],
                     "no tokenizer found")
        bad_jsonl = os.path.join(tmp, "bad.jsonl")
        with open(bad_jsonl, "w") as fh:
            fh.write('{"ids": [1, 2]}\n{"ids": [1, 2\n')
        expect_error("record: malformed JSON lines", ["record", "--model", good, "--prompts", bad_jsonl, "--out",
                                                      os.path.join(tmp, "z.h5")], "bad.jsonl:2")
        with open(bad_jsonl, "w") as fh:
            fh.write('{"text": "no prompt key"}\n')
        expect_error("record: JSON line without prompt", ["record", "--model", good, "--prompts", bad_jsonl,
                                                          "--out", os.path.join(tmp, "z.h5")], "needs")

        # Hugging Face layout, made by kvsim convert, then corrupted copies.
        hf = os.path.join(tmp, "hf")
        r = run(["convert", "--model", good, "--out", hf, "--quiet"])
        assert r.returncode == 0, r.stderr
        r = run(["generate", "--model", hf, "--ids", "--prompt", "1 5 7", "--steps", "4", "--quiet"])
        assert r.returncode == 0, r.stderr
        header, data = read_st(os.path.join(hf, "model.safetensors"))

        def variant(name, edit_config=None, edit_header=None, data_bytes=None, header_len=None, drop_st=False):
            d = os.path.join(tmp, name)
            shutil.copytree(hf, d)
            if edit_config:
                cfg = json.load(open(os.path.join(d, "config.json")))
                edit_config(cfg)
                json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
            st = os.path.join(d, "model.safetensors")
            if drop_st:
                os.remove(st)
            elif edit_header or data_bytes is not None or header_len is not None:
                h = json.loads(json.dumps(header))
                if edit_header:
                    edit_header(h)
                write_st(st, h, data if data_bytes is None else data_bytes, header_len)
            return d

        def arch(c):
            c["architectures"] = ["GPT2LMHeadModel"]
        expect_error("unknown architecture", ["generate", "--model", variant("arch", edit_config=arch), "--ids",
                                              "--prompt", "1"], "GPT2LMHeadModel")

        def rope(c):
            c["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
        expect_error("unsupported rope_scaling", ["generate", "--model", variant("rope", edit_config=rope), "--ids",
                                                  "--prompt", "1"], "yarn")

        expect_error("missing safetensors", ["generate", "--model", variant("nost", drop_st=True), "--ids",
                                             "--prompt", "1"], "safetensors")

        def offsets(h):
            h["model.norm.weight"]["data_offsets"][1] += 10 ** 6
        expect_error("safetensors offsets lie", ["generate", "--model", variant("off", edit_header=offsets), "--ids",
                                                 "--prompt", "1"], "data_offsets")

        def dtype(h):
            h["model.embed_tokens.weight"]["dtype"] = "BF16"  # bytes are F32: twice what BF16 needs
        expect_error("safetensors dtype lies", ["generate", "--model", variant("dt", edit_header=dtype), "--ids",
                                                "--prompt", "1"], "needs")

        def int_dtype(h):
            h["model.embed_tokens.weight"]["dtype"] = "I64"
        expect_error("safetensors unknown dtype", ["generate", "--model", variant("dt2", edit_header=int_dtype),
                                                   "--ids", "--prompt", "1"], "I64")

        def shape(h):
            h["model.norm.weight"]["shape"] = [DIM // 2]
            e = h["model.norm.weight"]["data_offsets"]
            e[1] = e[0] + DIM // 2 * 4
        expect_error("safetensors wrong shape", ["generate", "--model", variant("shape", edit_header=shape), "--ids",
                                                 "--prompt", "1"], "model.norm.weight")

        def missing(h):
            del h["model.layers.0.mlp.up_proj.weight"]
        expect_error("safetensors missing tensor", ["generate", "--model", variant("miss", edit_header=missing),
                                                    "--ids", "--prompt", "1"], "up_proj")
        expect_error("safetensors truncated data", ["generate", "--model", variant("tdata", data_bytes=data[:-64]),
                                                    "--ids", "--prompt", "1"], "data_offsets")
        expect_error("safetensors header length", ["generate", "--model", variant("hlen", header_len=10 ** 9),
                                                   "--ids", "--prompt", "1"], "header length")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("FAILED: " + ", ".join(failures))
        return 1
    print("all bad inputs rejected with one line and exit 2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
