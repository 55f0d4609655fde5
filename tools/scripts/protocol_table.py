#!/usr/bin/env python3
"""The README's protocol table from a results store made by `kvsim sweep configs/protocols.yaml`:
one row per strategy, per protocol its memory ratio (or read ratio under sparse), out_rel_l2, kl,
mass and topk32_recall, each the mean over the store's finished runs of that (strategy, protocol).

    python3 tools/scripts/protocol_table.py out/protocols.db
"""
import sqlite3
import sys

PROTOCOLS = ("evict", "prefill", "sparse")
METRICS = ("ratio", "read_ratio", "out_rel_l2", "kl", "mass", "topk32_recall")


def spec_params(spec):
    """name:k=v,k=v -> {k: v}; a bare item continues the previous value as a list (dense_layers=0,1)."""
    out, last = {}, None
    for item in spec.split(":", 1)[1].split(",") if ":" in spec else []:
        if "=" in item:
            last, v = item.split("=", 1)
            out[last] = v
        elif last is not None:
            out[last] += "," + item
    return out


def main(argv):
    if len(argv) != 2:
        print("usage: protocol_table.py STORE.db", file=sys.stderr)
        return 2
    try:
        con = sqlite3.connect(f"file:{argv[1]}?mode=ro", uri=True)
        rows = con.execute(
            "SELECT spec, protocol, metric, avg(mean), count(*) FROM results WHERE metric IN (%s) "
            "GROUP BY spec, protocol, metric" % ",".join("?" * len(METRICS)), METRICS).fetchall()
    except sqlite3.Error as e:
        print(f"protocol_table.py: {argv[1]}: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"protocol_table.py: {argv[1]}: no finished runs", file=sys.stderr)
        return 2
    cell, runs, specs = {}, {}, []
    for spec, protocol, metric, value, n in rows:
        cell[(spec, protocol, metric)] = value
        runs[(spec, protocol)] = n
        if spec not in specs:
            specs.append(spec)
    print("| strategy | protocol | ratio held | ratio read | out_rel_l2 | kl | mass | top32 | runs |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    names = [spec.split(":")[0] for spec in specs]
    params = [spec_params(spec) for spec in specs]
    for i, spec in enumerate(specs):
        name = names[i]
        same = [params[j] for j in range(len(specs)) if names[j] == name]
        if len(same) > 1:  # configurations of one method: the parameters that tell them apart
            differ = sorted(k for k in params[i] if any(o.get(k) != params[i][k] for o in same))
            name += ":" + ",".join(f"{k}={params[i][k]}" for k in differ)
        for p in PROTOCOLS:
            if (spec, p) not in runs:
                continue
            v = lambda m: cell.get((spec, p, m), float("nan"))
            print(f"| {name} | {p} | {v('ratio'):.3f} | {v('read_ratio'):.3f} | {v('out_rel_l2'):.4f} | "
                  f"{v('kl'):.3f} | {v('mass'):.4f} | {v('topk32_recall'):.3f} | {runs[(spec, p)]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
