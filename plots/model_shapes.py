"""Model shapes for the memory plot (no matplotlib here, so bad input is refused before it loads)."""
import re

from kvsim_store import PlotError

# name: (L, Hkv, D, parameters in billions) - weights in bf16 take 2 bytes per parameter.
SHAPES = {
    "tiny": (2, 2, 16, 0.0),
    "stories260k": (5, 4, 8, 0.00026),
    "llama2-7b": (32, 32, 128, 6.74),
    "llama3-8b": (32, 8, 128, 8.03),
    "mistral-7b": (32, 8, 128, 7.24),
    "qwen2.5-7b": (28, 4, 128, 7.62),
    "llama3-70b": (80, 8, 128, 70.6),
}
# The worst acceptable value of each metric when no --quality is given.
DEFAULT_QUALITY = {"out_rel_l2": 0.1, "kl": 0.01, "tv": 0.05, "mass": 0.95, "out_cos": 0.99,
                   "topk8_recall": 0.9, "topk32_recall": 0.9, "logit_rel_err": 0.1, "k_rel_err": 0.1,
                   "v_rel_err": 0.1}


def parse_shape(text):
    """'llama3-8b' or 'LxHkvxD' (e.g. 32x8x128) -> (label, L, Hkv, D, params in billions or None)."""
    if text in SHAPES:
        L, Hkv, D, p = SHAPES[text]
        return text, L, Hkv, D, p
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", text)
    if not m:
        raise PlotError(f"unknown --shape '{text}' (choose {', '.join(SHAPES)}, or LxHkvxD such as 32x8x128)")
    L, Hkv, D = (int(g) for g in m.groups())
    if min(L, Hkv, D) < 1:
        raise PlotError(f"--shape {text}: L, Hkv and D must be positive")
    return text, L, Hkv, D, None
