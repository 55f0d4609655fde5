#!/usr/bin/env python3
"""`kvsim prefix`: bytes per token equal to `kvsim run`'s accounting and to a hand computation, hit rates
and evictions of small workloads worked out by hand, the JSON shape, --synth and --write-workload,
`kvsim plot prefix`, and bad inputs giving one line on stderr and exit code 2. Run:
    /usr/bin/python3 tests/py/test_prefix_cli.py --kvsim build/kvsim
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvsim_testlib as lib  # noqa: E402

# Shape tiny: L = 2, Hkv = 2, D = 16. fp16: 2 bytes x (K + V) x D x L x Hkv = 256 bytes per token.
# nf4 (block 64 >= D): per tensor D/2 + 4 D/64 = 9 bytes -> 18 x 4 = 72. kivi:bits=2 over 256 tokens
# (group 32, vgroup 16, residual 32): keys 224 x 6 + 32 x 32, values 223 x 8 + 33 x 32 = 5208 bytes per
# (layer, KV head) -> 5208 x 4 / 256 = 81.375.
HAND_BPT = {"fp16": 256.0, "nf4": 72.0, "kivi:bits=2": 81.375}


def main():
    a = lib.parse_args()
    kv = os.path.abspath(a.kvsim)
    suite = lib.Suite()
    tmp = lib.tempdir()
    d = tmp.name

    def prefix(*args, timeout=60):
        return lib.run([kv, "prefix"] + list(args), timeout=timeout)

    def prefix_json(*args):
        r = prefix(*args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def workload(name, rows):
        p = os.path.join(d, name)
        with open(p, "w") as f:
            for r in rows:
                f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
        return p

    trace = os.path.join(d, "tiny.h5")
    r = lib.run([kv, "synth", "--shape", "tiny", "--tokens", "256", "--seed", "1", "--out", trace, "--quiet"])
    assert r.returncode == 0, r.stderr

    def bytes_per_token_match_run():
        run = lib.run([kv, "run", "--trace", trace, "--prefill", "255", "--json", "--strategy", "full",
                       "--strategy", "nf4", "--strategy", "kivi:bits=2"], timeout=120)
        assert run.returncode == 0, run.stderr
        # one decode step (t = 255): the cache holds all 256 tokens; bytes per (layer, KV head)
        by_run = [res["summary"]["bytes"]["mean"] * 2 * 2 / 256 for res in json.loads(run.stdout)["results"]]
        one = workload("one.jsonl", [{"ids": [1, 2, 3]}])
        got = prefix_json("--workload", one, "--trace", trace, "--capacity", "0", "--bpt-tokens", "256", "--codec", "fp16",
                          "--codec", "nf4", "--codec", "kivi:bits=2")
        mine = [res["bytes_per_token"] for res in got["results"]]
        hand = [HAND_BPT[c] for c in ("fp16", "nf4", "kivi:bits=2")]
        assert mine == hand, (mine, hand)
        assert by_run == hand, (by_run, hand)
        # the named shape gives the same numbers as the trace of that shape
        shape = prefix_json("--workload", one, "--shape", "tiny", "--capacity", "0", "--bpt-tokens", "256", "--codec", "kivi:bits=2")
        assert shape["results"][0]["bytes_per_token"] == 81.375

    # LRU order by hand (block 2 = 512 bytes, capacity 2 blocks): A B A C B A B with one block each.
    # t3 C evicts B (least recently used; FIFO would take A), t4 B evicts A, t5 A evicts C, t6 B hits.
    A, B, C = [5, 6, 9], [7, 8, 9], [10, 11, 9]
    lru_rows = [{"ids": x} for x in (A, B, A, C, B, A, B)]

    def lru_by_hand():
        j = prefix_json("--workload", workload("lru.jsonl", lru_rows), "--shape", "tiny", "--block", "2",
                        "--capacity", "1KiB")
        assert list(j) == ["block", "bpt_tokens", "requests", "results", "sessions", "shape", "source", "tokens",
                           "ttl", "workload"], list(j)
        (res,) = j["results"]
        assert res["capacity_bytes"] == 1024 and res["capacity_tokens"] == 4, res
        assert res["prefill_tokens_saved"] == 4 and res["hit_requests"] == 2, res
        assert res["token_hit_rate"] == 4 / 21 and res["request_hit_rate"] == 2 / 7, res
        assert res["evictions_lru"] == 3 and res["evictions_ttl"] == 0, res
        assert res["peak_bytes"] == 1024, res
        assert [p[0] for p in res["bytes_over_time"]] == [0, 1, 2, 3, 4, 5, 6], res["bytes_over_time"]
        assert [p[1] for p in res["bytes_over_time"]] == [512, 1024, 1024, 1024, 1024, 1024, 1024]

    def ttl_by_hand():
        # ttl 10: reused after exactly 10 s idle, expired after 10.5 s (2 blocks).
        rows = [{"ids": [1, 2, 3, 4, 5], "arrival": t} for t in (0, 10, 20.5)]
        j = prefix_json("--workload", workload("ttl.jsonl", rows), "--shape", "tiny", "--block", "2",
                        "--capacity", "1MiB", "--ttl", "10")
        (res,) = j["results"]
        assert j["ttl"] == 10
        assert res["prefill_tokens_saved"] == 4 and res["evictions_ttl"] == 2 and res["evictions_lru"] == 0, res
        j = prefix_json("--workload", workload("ttl.jsonl", rows), "--shape", "tiny", "--block", "2",
                        "--capacity", "1MiB")
        assert j["ttl"] is None and j["results"][0]["prefill_tokens_saved"] == 8, j

    def capacities_and_curve():
        # identical 33-token requests (block 16): 2 blocks = 8 KiB in fp16 on tiny, a repeat reuses them.
        rows = [{"ids": list(range(3, 36)), "session": "s"} for _ in range(4)]
        j = prefix_json("--workload", workload("same.jsonl", rows), "--shape", "tiny", "--capacity",
                        "0,4KiB,8KiB,8.192kB,1GiB", "--codec", "fp16", "--codec", "nf4")
        assert j["sessions"] == 1 and j["requests"] == 4 and j["tokens"] == 132
        caps = [(res["codec"], res["capacity_bytes"], res["prefill_tokens_saved"]) for res in j["results"]]
        # fp16: a block costs 4096 bytes, nf4 1152: 4 KiB holds 1 fp16 block (the first), 3 nf4 blocks.
        assert caps == [("fp16", 0, 0), ("fp16", 4096, 48), ("fp16", 8192, 96), ("fp16", 8192, 96),
                        ("fp16", 2 ** 30, 96), ("nf4", 0, 0), ("nf4", 4096, 96), ("nf4", 8192, 96),
                        ("nf4", 8192, 96), ("nf4", 2 ** 30, 96)], caps
        r = prefix("--workload", workload("same.jsonl", rows), "--shape", "tiny", "--capacity", "0,1GiB")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert "4 requests" in lines[0] and "L=2 Hkv=2 D=16" in lines[0], lines[0]
        assert lines[1].split()[:4] == ["codec", "bytes/tok", "capacity", "tok_hit"], lines[1]
        assert lines[3].split()[:4] == ["fp16", "256.00", "1073741824", "0.7273"], lines[3]  # 96 / 132

    def synth_and_write_workload():
        out = os.path.join(d, "sys.jsonl")
        spec = "system-prompt:requests=30,system=256,user=32,seed=5"
        j = prefix_json("--synth", spec, "--shape", "llama3-8b", "--capacity", "64MiB,1GiB", "--codec", "nf4",
                        "--write-workload", out)
        again = prefix_json("--workload", out, "--shape", "llama3-8b", "--capacity", "64MiB,1GiB", "--codec", "nf4")
        strip = lambda x: [{k: v for k, v in res.items()} for res in x["results"]]  # noqa: E731
        assert strip(j) == strip(again)
        # with room for everything each later request reuses the 16 blocks of the system prompt
        assert j["results"][1]["prefill_tokens_saved"] == 256 * 29, j["results"][1]
        assert j["results"][1]["request_hit_rate"] == 29 / 30
        for kind in ("chat:sessions=4,turns=3", "agent:loops=2,steps=4,context=512", "random:requests=20,len=64"):
            res = prefix_json("--synth", kind, "--shape", "tiny", "--capacity", "1GiB")["results"][0]
            assert (res["token_hit_rate"] > 0) == (not kind.startswith("random")), (kind, res)

    def plot_prefix():
        js = os.path.join(d, "curve.json")
        r = prefix("--synth", "system-prompt:requests=40,system=512,user=64", "--shape", "llama3-8b",
                   "--capacity", "16MiB,64MiB,256MiB", "--codec", "fp16", "--codec", "nf4", "--json")
        assert r.returncode == 0, r.stderr
        with open(js, "w") as f:
            f.write(r.stdout)
        p = lib.run([kv, "plot", "prefix", "--prefix-json", js, "--out", d, "--format", "png", "--csv"], timeout=120)
        assert p.returncode == 0, p.stderr
        assert os.path.getsize(os.path.join(d, "prefix.png")) > 1000
        with open(os.path.join(d, "prefix.csv")) as f:
            rows = f.read().splitlines()
        assert len(rows) == 1 + 6 and rows[0].startswith("codec,capacity_bytes"), rows

    def bad_inputs():
        ok = workload("ok.jsonl", [{"ids": [1, 2, 3]}])
        cases = {
            "not JSON": (["--workload", workload("bad.jsonl", ['{"ids": [1, 2]}', "{nope"]), "--shape", "tiny",
                          "--capacity", "1MiB"], "bad.jsonl:2: not JSON"),
            "no ids": (["--workload", workload("noids.jsonl", ['{"x": 1}']), "--shape", "tiny", "--capacity", "1"],
                       'needs "ids"'),
            "text without tokenizer": (["--workload", workload("text.jsonl", ['{"text": "hi"}']), "--shape", "tiny",
                                        "--capacity", "1"], "needs a tokenizer"),
            "arrival decreasing": (["--workload", workload("arr.jsonl", ['{"ids": [1], "arrival": 5}',
                                                                         '{"ids": [1], "arrival": 4}']),
                                    "--shape", "tiny", "--capacity", "1"], "before the previous request"),
            "arrival on some lines": (["--workload", workload("arr2.jsonl", ['{"ids": [1]}',
                                                                             '{"ids": [1], "arrival": 5}']),
                                       "--shape", "tiny", "--capacity", "1"], "1 of 2 requests have"),
            "id outside vocabulary": (["--workload", workload("voc.jsonl", ['{"ids": [1, 256]}']), "--shape", "tiny",
                                       "--capacity", "1"], "token id 256 is outside the vocabulary [0, 256)"),
            "negative capacity": (["--workload", ok, "--shape", "tiny", "--capacity", "1MiB,-5"],
                                  "--capacity '-5': must be a size >= 0"),
            "unknown unit": (["--workload", ok, "--shape", "tiny", "--capacity", "3parsecs"], "not a size"),
            "not a size": (["--workload", ok, "--shape", "tiny", "--capacity", "lots"], "not a size"),
            "negative ttl": (["--workload", ok, "--shape", "tiny", "--capacity", "1", "--ttl", "-1"],
                             "--ttl -1"),
            "unknown codec": (["--workload", ok, "--shape", "tiny", "--capacity", "1", "--codec", "zip"],
                              "unknown codec 'zip'"),
            "codec param": (["--workload", ok, "--shape", "tiny", "--capacity", "1", "--codec", "nf4:bits=3"],
                            "bits"),
            "codec misfit": (["--workload", ok, "--shape", "tiny", "--capacity", "1", "--codec",
                              "quant:group=64"], "does not divide D = 16"),
            "block zero": (["--workload", ok, "--shape", "tiny", "--capacity", "1", "--block", "0"], "--block 0"),
            "two shapes": (["--workload", ok, "--shape", "tiny", "--trace", trace, "--capacity", "1"],
                           "exactly one of --shape"),
            "no workload": (["--shape", "tiny", "--capacity", "1"], "exactly one of --workload"),
            "unknown shape": (["--workload", ok, "--shape", "gpt5", "--capacity", "1"], "gpt5"),
            "unknown synth": (["--synth", "zipf", "--shape", "tiny", "--capacity", "1"], "unknown workload 'zipf'"),
            "synth param": (["--synth", "chat:turns=0", "--shape", "tiny", "--capacity", "1"], "turns=0"),
            "model not a model": (["--workload", ok, "--model", ok, "--capacity", "1"], "ok.jsonl"),
            "missing workload": (["--workload", os.path.join(d, "none.jsonl"), "--shape", "tiny", "--capacity", "1"],
                                 "cannot open"),
        }
        for name, (args, needle) in cases.items():
            r = prefix(*args)
            err = r.stderr.strip().splitlines()
            assert r.returncode == 2, (name, r.returncode, r.stderr)
            assert len(err) == 1 and needle in err[0], (name, err)

    suite.check("bytes per token = kvsim run's accounting = hand", bytes_per_token_match_run)
    suite.check("LRU order by hand", lru_by_hand)
    suite.check("TTL at the exact second by hand", ttl_by_hand)
    suite.check("capacities, codecs and the table", capacities_and_curve)
    suite.check("--synth kinds and --write-workload", synth_and_write_workload)
    suite.check("kvsim plot prefix", plot_prefix)
    suite.check("bad input: one line, exit 2", bad_inputs)
    suite.finish()


if __name__ == "__main__":
    main()
