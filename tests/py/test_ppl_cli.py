#!/usr/bin/env python3
"""`kvsim ppl` on stories260K: table and JSON (design.md §6 `run`-like shape), --ids equal to the
tokenized text, the memory ratio equal to `kvsim run`'s on a trace of the same ids where the slot
count does not depend on the data, and bad inputs giving one line on stderr and exit code 2.
Skipped (exit 77, "skipped: ...", which ctest reports as Skipped) when ../shared/models is missing. Run:
    /usr/bin/python3 tests/py/test_ppl_cli.py --kvsim build/kvsim
"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvsim_testlib as lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "..", "shared", "models", "stories260K", "stories260K.bin")
TEXT = ("Once upon a time, there was a little girl named Lily. She loved to play in the park with her red ball. "
        "One day, she saw a big dog near the swings. The dog was sad because it was lost.")


def main():
    a = lib.parse_args()
    if not os.path.exists(MODEL):
        lib.skip("../shared/models not found")
    kv = os.path.abspath(a.kvsim)
    suite = lib.Suite()
    tmp = lib.tempdir()
    d = tmp.name

    def ppl(*args):
        return lib.run([kv, "ppl", "--model", MODEL, "--quiet"] + list(args), timeout=120)

    def ppl_json(*args):
        r = ppl(*args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def same_numbers(a, b):  # results apart from their timing
        strip = lambda j: [{k: v for k, v in r.items() if k != "seconds"} for r in j["results"]]  # noqa: E731
        return strip(a) == strip(b)

    def table():
        r = ppl("--prompt", TEXT, "--prefill", "12", "--strategy", "window:budget=8", "--strategy", "tova:budget=8")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert "P=12" in lines[0] and "predicted tokens" in lines[0], lines[0]
        assert "ppl" in lines[1] and "ratio" in lines[1], lines[1]
        rows = [ln.split()[0] for ln in lines[2:]]
        assert rows == ["full", "window:budget=8", "tova:budget=8"], rows
        assert lines[2].split()[2] in ("+0.0000", "-0.0000"), lines[2]  # full's Δppl

    def json_shape():
        j = ppl_json("--prompt", TEXT, "--prefill", "12", "--strategy", "h2o:budget=8", "--strategy", "full")
        assert {"model", "T", "prefill", "n_predicted", "shape", "backend", "results"} <= set(j), j.keys()
        assert j["prefill"] == 12 and j["n_predicted"] == j["T"] - 12, j
        res = j["results"]
        assert [r["strategy"] for r in res] == ["full", "h2o"], res  # `full` once, first
        for r in res:
            assert {"strategy", "spec", "params", "ppl", "delta_ppl", "nll", "ratio", "seconds"} <= set(r), r
            assert abs(r["ppl"] - math.exp(r["nll"])) <= 1e-9 * r["ppl"], r
        assert res[0]["delta_ppl"] == 0 and res[0]["ratio"] == 1, res[0]
        assert res[1]["params"]["budget"] == "8" and res[1]["ratio"] < 1, res[1]
        assert res[1]["delta_ppl"] == res[1]["ppl"] - res[0]["ppl"], res

    def per_token():
        # token_nll averages to nll; greedy agreement recomputed here from the argmax lists; full agrees
        # with itself; and a window of 1 token (which must diverge somewhere) names its first divergence.
        j = ppl_json("--prompt", TEXT, "--prefill", "12", "--strategy", "window:budget=1", "--per-token")
        n = j["T"] - 12
        assert len(j["ids"]) == j["T"], j.keys()
        full, win = j["results"]
        for r in (full, win):
            assert len(r["token_nll"]) == n and len(r["argmax"]) == n, r.keys()
            assert abs(sum(r["token_nll"]) / n - r["nll"]) <= 1e-12 * max(1.0, r["nll"]), r["nll"]
        assert full["greedy_agreement"] == 1 and full["first_divergence"] is None, full
        same = [a == b for a, b in zip(full["argmax"], win["argmax"])]
        assert abs(win["greedy_agreement"] - sum(same) / n) < 1e-12, (win["greedy_agreement"], sum(same))
        assert not all(same), "window:budget=1 predicts exactly like full: the check cannot discriminate"
        assert win["first_divergence"] == 12 + same.index(False), (win["first_divergence"], same.index(False))
        # without --per-token, no per-token arrays (the JSON stays small)
        j2 = ppl_json("--prompt", TEXT, "--prefill", "12", "--strategy", "window:budget=1")
        assert "token_nll" not in j2["results"][1] and "greedy_agreement" in j2["results"][1], j2["results"][1]

    def ids_equal_text():
        by_text = ppl_json("--prompt", "Zoo", "--prefill", "1", "--strategy", "window:budget=1")
        by_ids = ppl_json("--ids", "1 410 469 347", "--prefill", "1", "--strategy", "window:budget=1")
        assert by_text["T"] == 4 and same_numbers(by_text, by_ids), (by_text, by_ids)

    def text_file_and_max_tokens():
        f = os.path.join(d, "story.txt")
        with open(f, "w") as fh:
            fh.write(TEXT)
        a1 = ppl_json("--text", f, "--max-tokens", "30", "--prefill", "10")
        a2 = ppl_json("--prompt", TEXT, "--max-tokens", "30", "--prefill", "10")
        assert a1["T"] == 30 and same_numbers(a1, a2), (a1, a2)

    def ratio_matches_replay():
        # The same ids recorded as a trace: `kvsim run` measures the ratio offline from the trace.
        r = lib.run([kv, "record", "--model", MODEL, "--prompt", TEXT, "--out", os.path.join(d, "t.h5"), "--quiet"])
        assert r.returncode == 0, r.stderr
        specs = ["window:budget=8", "streaming:budget=10", "window:budget=16+kivi:bits=2"]
        off = lib.run([kv, "run", "--trace", os.path.join(d, "t.h5"), "--prefill", "12", "--json", "--quiet",
                       "--stats-cache", "off"] + sum((["--strategy", s] for s in specs), []))
        assert off.returncode == 0, off.stderr
        offline = {x["spec"]: x["summary"]["ratio"]["mean"] for x in json.loads(off.stdout)["results"]}
        on = ppl_json("--prompt", TEXT, "--prefill", "12", *sum((["--strategy", s] for s in specs), []))
        online = {x["spec"]: x["ratio"] for x in on["results"]}
        for s in specs:
            assert abs(online[s] - offline[s]) <= 1e-9, (s, online[s], offline[s])

    def bad(args, needle):
        r = lib.run([kv, "ppl"] + args, timeout=60)
        lib.check_usage_error(r, needle, args)

    def bad_inputs():
        long_text = os.path.join(d, "long.txt")
        with open(long_text, "w") as fh:
            fh.write(TEXT * 20)
        m = ["--model", MODEL]
        bad(m + ["--prompt", TEXT, "--strategy", "nosuch:budget=3"], "unknown strategy 'nosuch'")
        bad(m + ["--prompt", TEXT, "--strategy", "window"], "budget")
        bad(m + ["--prompt", "Zoo", "--prefill", "4"], "--prefill 4 must satisfy 1 <= P < T = 4")
        bad(m + ["--prompt", "Zoo", "--prefill", "0"], "--prefill 0")
        bad(m + ["--text", long_text], "exceed the context length seq_len = 512")
        bad(m + ["--text", os.path.join(d, "missing.txt")], "cannot open")
        bad(["--model", os.path.join(d, "missing.bin"), "--prompt", TEXT], "model not found")
        bad(m, "give exactly one of --text FILE, --prompt TEXT or --ids IDS")
        bad(m + ["--prompt", TEXT, "--ids", "1 2"], "give exactly one of")
        bad(m + ["--ids", "1 2 x"], "x")
        bad(m + ["--ids", "1 2 3 999"], "outside the vocabulary")
        bad(m + ["--prompt", TEXT, "--backend", "gpu"], "--backend gpu")
        bad(m + ["--prompt", TEXT, "--max-tokens", "0"], "--max-tokens 0")

    def help_text():
        r = lib.run([kv, "ppl", "--help"])
        assert r.returncode == 0, r.stderr
        for opt in ["--model", "--text", "--prompt", "--ids", "--strategy", "--prefill", "--max-tokens", "--backend",
                    "--json", "--tokenizer", "--no-bos", "--quiet", "--per-token"]:
            assert opt in r.stdout, opt

    for name, fn in [("table", table), ("json shape", json_shape), ("--per-token: token nll, argmax, greedy agreement", per_token),
                     ("--ids equals the tokenized text", ids_equal_text),
                     ("--text file and --max-tokens", text_file_and_max_tokens),
                     ("ratio equals kvsim run's on the same ids", ratio_matches_replay),
                     ("bad inputs: one line, exit 2", bad_inputs), ("--help", help_text)]:
        suite.check(name, fn)
    tmp.cleanup()
    suite.finish()


if __name__ == "__main__":
    sys.exit(main())
