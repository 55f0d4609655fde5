#!/usr/bin/env python3
"""A notebook-style walk through the kvsim Python module: replay the embedded trace through a small grid,
look at the numbers as a DataFrame, draw the Pareto front with the plot scripts' own functions.

    PYTHONPATH=build/python /usr/bin/python3 plots/example_notebook.py [--out out/notebook]

Each cell below would be one notebook cell."""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the plot scripts' modules (kvsim_style, store_figures)

import kvsim  # noqa: E402  (PYTHONPATH=build/python, or installed: README "Python")

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--trace", default=os.path.join(HERE, "..", "traces", "samples", "stories260K.h5"))
ap.add_argument("--out", default="out/notebook")
a = ap.parse_args()

# %% What is in the trace, and which strategies are there
info = kvsim.info(a.trace)
print(f"{info['model']}: L={info['n_layers']} H={info['n_heads']} Hkv={info['n_kv_heads']} D={info['head_dim']}, "
      f"{len(info['sequences'])} sequences")
reg = kvsim.strategies()
for kind, names in reg.groupby("kind").name:
    print(f"{kind}: {', '.join(names)}")

# %% A small grid: four strategies x four budgets, plus two quantized full caches, in one replay
grid = [f"{s}:budget={b}" for s in ("h2o", "snapkv", "streaming", "tova") for b in (48, 64, 128, 256)]
grid += ["kivi:bits=2", "nf4", "h2o:budget=128+kivi:bits=4"]
df = kvsim.run(a.trace, grid, prefill=64, stride=2, progress=True)
table = kvsim.wide(df)[["spec", "ratio", "kl", "out_cos", "mass"]].sort_values("ratio")
print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))

# %% The Pareto front of memory against KL, drawn by the same function as `kvsim plot pareto`
import kvsim_style  # noqa: E402
import store_figures  # noqa: E402

kvsim_style.setup_matplotlib()
points = kvsim.wide(df)[["strategy", "spec", "protocol", "ratio", "kl"]].rename(columns={"kl": "value"})
fig = kvsim_style.new_figure("pareto", layout="constrained")
ax = fig.add_subplot()
handles = store_figures.draw_pareto(ax, points, "kl")
ax.legend(handles=handles, fontsize=6, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.14))
ax.set_title(f"{kvsim_style.short_model(info['model'])}: {len(points)} configurations (kvsim Python module)", fontsize=7)
os.makedirs(a.out, exist_ok=True)
path = os.path.join(a.out, "pareto.png")
fig.savefig(path, dpi=150, bbox_inches="tight")
print(f"figure: {path}")
