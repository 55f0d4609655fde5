#!/usr/bin/env python3
"""The layers of kvsim (CMakeLists.txt, README "Where things are"): a file may include headers of its
own layer and of the layers below it, never above. Scans every #include "..." of the source tree and
prints each violation as FILE:LINE: LAYER includes HEADER (layer L); exit 1 if there is any.

    base < traces < kernels (sim/kernels, cuda) < strategies < sim (engine) < model (traces/model)
    store sits on base alone; tools and tests may include everything.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# layer -> the layers it may include (itself included)
ALLOWED = {
    "base": {"base"},
    "traces": {"base", "traces"},
    "kernels": {"base", "kernels"},
    "strategies": {"base", "kernels", "strategies"},
    "sim": {"base", "traces", "kernels", "strategies", "sim"},
    "store": {"base", "store"},
    "model": {"base", "traces", "kernels", "strategies", "sim", "model"},
    "tools": None,  # everything
    "tests": None,
}


def layer_of(rel: str):
    """The layer of a path relative to the root, or None for files outside the layered tree."""
    for prefix, layer in (("sim/base/", "base"), ("sim/kernels/", "kernels"), ("cuda/", "kernels"),
                          ("sim/strategies/", "strategies"), ("sim/store/", "store"), ("traces/model/", "model"),
                          ("traces/", "traces"), ("sim/", "sim"), ("tools/", "tools"), ("tests/", "tests")):
        if rel.startswith(prefix):
            return layer
    return None


def main() -> int:
    bad = []
    checked = 0
    for path in sorted(ROOT.rglob("*")):
        if path.suffix not in (".h", ".cpp", ".cu") or "build" in path.relative_to(ROOT).parts[0]:
            continue
        rel = path.relative_to(ROOT).as_posix()
        layer = layer_of(rel)
        if layer is None or ALLOWED[layer] is None:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
            if not m:
                continue
            inc = m.group(1)
            target = layer_of(inc)
            if target is None:  # a system-like or folder-local header
                continue
            checked += 1
            if target not in ALLOWED[layer]:
                bad.append(f"{rel}:{n}: {layer} includes {inc} (layer {target})")
    for b in bad:
        print(b)
    print(f"layers: {checked} includes checked, {len(bad)} violations")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
