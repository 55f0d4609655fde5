#!/usr/bin/env python3
"""`kvsim validate` on stories260K with a small config (every family, 2 texts, short sequences):
  - the correlations in correlations.json are recomputed here independently, with scipy.stats, from the
    store the command wrote (validate.db: each configuration's offline summary means, averaged over the
    texts) and from live.json (Δppl from the per-token nlls: exp(mean nll) − exp(mean full nll));
  - live.json's ppl of each run is exp of its token nlls' mean, and its greedy agreement matches the argmax lists;
  - key-token selection (LongPPL's rule) on a hand-built case;
  - bad input: a missing config or model is one line on stderr and exit 2.
Skipped (exit 77) without ../shared/models. Run as: /usr/bin/python3 test_validate.py --kvsim PATH"""
import json
import math
import os
import sqlite3
import sys

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "plots"))

from kvsim_testlib import Suite, parse_args, run, skip, tempdir  # noqa: E402

MODEL = os.path.join(ROOT, "..", "shared", "models", "stories260K", "stories260K.bin")
CONFIG = """tokens: 224
prefill: 48
key_tokens: {short: 16, stride: 16, alpha: 0.5, beta: -4.0}
configs:
  evict: [window:budget=8, window:budget=24, h2o:budget=16, entropy_merge:budget=16, cms_aggregate:budget=16,
          kivi:bits=2, quant:bits=4, h2o:budget=16+kivi:bits=2]
  prefill:
    - h2o:budget=8
    - snapkv:budget=16,window=4
  sparse:
    - oracle_topk:budget=4
    - oracle_topk:budget=16
    - quest:budget=16,page=4,dense_layers=
"""
METRICS = {"kl": ("kl", 1), "out_rel_l2": ("out_rel_l2", 1), "tv": ("tv", 1), "1-mass": ("mass", -1),
           "1-out_cos": ("out_cos", -1), "1-topk8_recall": ("topk8_recall", -1)}


def key_tokens_by_hand():
    import numpy as np
    from kvsim_validate import key_tokens

    full = np.array([0.5, 0.5, 3.0, 1.0, 1.0, 0.1])
    short = np.array([3.0, 2.4, 6.0, 1.5, np.nan, 2.2])
    # LSD = short − full: 2.5, 1.9, 3.0, 0.5, nan, 2.1; LCL = −full: −0.5, −0.5, −3, −1, −1, −0.1.
    # α = 2, β = −2: key iff LSD > 2 and LCL > −2 -> positions 0 and 5 (2 fails LCL, 1 LSD, 4 has no score).
    got = key_tokens(full, short, 2.0, -2.0)
    assert got.tolist() == [True, False, False, False, False, True], got


def main():
    a = parse_args()
    if not os.path.exists(MODEL):
        skip(f"{MODEL} not found (../shared/models)")
    import numpy as np
    from scipy import stats

    suite = Suite()
    suite.check("key tokens: LongPPL's rule on a hand-built case", key_tokens_by_hand)
    with tempdir() as d:
        cfg = os.path.join(d, "v.yaml")
        with open(cfg, "w") as f:
            f.write(CONFIG)
        texts = [os.path.join(ROOT, "traces", "samples", "texts", n) for n in ("kite.txt", "seed.txt")]
        out = os.path.join(d, "out")
        r = run([a.kvsim, "validate", "--model", MODEL, "--config", cfg, "--out", out, "--bootstrap", "20",
                 "--format", "png", "--quiet"] + sum((["--text", t] for t in texts), []))
        assert r.returncode == 0, r.stderr
        corr = json.load(open(os.path.join(out, "correlations.json")))
        live = json.load(open(os.path.join(out, "live.json")))

        def files():
            for f in ("report.md", "validate.png", "validate.db", "offline.json", "live.json"):
                assert os.path.getsize(os.path.join(out, f)) > 0, f
            rep = open(os.path.join(out, "report.md")).read()
            assert "| kl |" in rep and "Key tokens" in rep and "validate.png" in rep, rep[:400]

        suite.check("writes the report, the figure, the store and the numbers", files)

        def live_numbers():
            for x in live["runs"]:
                nll = x["token_nll"]
                assert len(nll) == live["tokens"] - live["prefill"], len(nll)
                assert abs(x["ppl"] - math.exp(sum(nll) / len(nll))) < 1e-9 * x["ppl"], x["spec"]
            full = {x["text"]: x for x in live["runs"] if x["spec"] == "full"}
            for x in live["runs"]:
                same = np.mean([p == q for p, q in zip(x["argmax"], full[x["text"]]["argmax"])])
                assert abs(x["greedy_agreement"] - same) < 1e-12, (x["spec"], x["greedy_agreement"], same)

        suite.check("live: ppl from the token nlls, greedy agreement from the argmax lists", live_numbers)

        def correlations_from_the_store():
            con = sqlite3.connect(os.path.join(out, "validate.db"))
            rows = con.execute(
                "SELECT c.spec, r.protocol, r.sequence, s.metric, s.mean FROM summaries s JOIN runs r ON r.id = s.run_id "
                "JOIN configs c ON c.id = r.config_id WHERE s.layer = -1 AND r.status = 'done'").fetchall()
            con.close()
            off = {}
            for spec, proto, seq, metric, mean in rows:
                off.setdefault((proto, spec), {}).setdefault(metric, {})[seq] = mean
            full = {x["text"]: np.array(x["token_nll"]) for x in live["runs"] if x["spec"] == "full"}
            dppl = {}
            for x in live["runs"]:
                if x["spec"] == "full":
                    continue
                n = np.array(x["token_nll"])
                dppl.setdefault((x["protocol"], x["spec"]), []).append(
                    math.exp(n.mean()) - math.exp(full[x["text"]].mean()))
            keys = sorted(dppl)
            # the store's spec text is the canonical spec (defaults filled in); match by the config's order
            by_cfg = {}
            for (proto, spec) in off:
                by_cfg.setdefault(proto, []).append(spec)
            assert len(keys) == 13 == len(off), (len(keys), len(off))
            # The store keeps each spec's canonical text (defaults filled in): a config spec names the same
            # strategy+codec parts, each with a subset of the canonical parameters.
            # (A bare codec is stored as full+codec with its parameters prefixed by the codec's name.)
            def parts(spec):
                out = []
                for p in spec.split("+"):
                    name, _, params = p.partition(":")
                    out.append((name, set(x.removeprefix(name + ".") for x in params.split(",") if x)))
                return out[1:] if len(out) > 1 and out[0] == ("full", set()) else out

            def find(proto, spec):
                want = parts(spec)
                hit = [c for c in by_cfg[proto] if len(parts(c)) == len(want) and
                       all(n == m and w <= h for (n, w), (m, h) in zip(want, parts(c)))]
                assert len(hit) == 1, (spec, hit)
                return hit[0]

            y = [float(np.mean(dppl[k])) for k in keys]
            for m, (metric, sign) in METRICS.items():
                x = []
                for proto, spec in keys:
                    v = float(np.mean(list(off[(proto, find(proto, spec))][metric].values())))
                    x.append(v if sign > 0 else 1.0 - v)
                want = {"pearson": stats.pearsonr(x, y)[0], "spearman": stats.spearmanr(x, y)[0],
                        "kendall": stats.kendalltau(x, y)[0]}
                for k, v in want.items():
                    got = corr["overall"][m][k]
                    assert abs(got - v) < 1e-9, f"{m} {k}: kvsim validate {got}, scipy {v}"

        suite.check("correlations recomputed with scipy from validate.db and live.json", correlations_from_the_store)

        def bad_input():
            for argv, needle in ((["--config", os.path.join(d, "nope.yaml")], "nope.yaml"),
                                 (["--model", os.path.join(d, "nope.bin")], "nope.bin")):
                base = ["--model", MODEL, "--out", os.path.join(d, "bad")]
                if argv[0] == "--model":
                    base = base[2:]
                r = run([a.kvsim, "validate", *base, *argv, "--quiet"])
                lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
                assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], (r.returncode, r.stderr)

        suite.check("bad input: one line, exit 2", bad_input)
    return suite.finish()


if __name__ == "__main__":
    sys.exit(main())
