#!/usr/bin/env python3
"""kvsim-record-hf: record a kvtrace v1 file (traces/FORMAT.md) from a PyTorch causal LM.

The recorder does not re-implement any model. It puts one function between each attention module and
its attention kernel, sees the module's own query, key and value exactly as the kernel receives them
(after the projections, any q/k norm and the position embedding; keys and values before GQA repetition)
and streams them to the trace layer by layer: a forward hook on each attention module writes that layer
as soon as the module returns.

Two ways in, one mechanism:
- transformers models (Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3, GPT-2): the function is
  registered in transformers' AttentionInterface and the model's `_attn_implementation` is pointed at it;
  it delegates to the implementation the model was using (sdpa or eager).
- your own module: each attention module calls `self.attention_function(self, q, k, v, mask, scaling=s)`
  (q [B, H, T, D], k/v [B, Hkv, T, D], returns (out [B, T, H, D], weights)) and the model carries
  `kvsim_spec`, a dict of the trace's root attributes. Load it with `--model FILE.py:FACTORY`.

What the trace cannot describe is refused with one line (exit 2), never recorded wrongly: soft-capped
attention logits, a sliding window shorter than the sequence, attention sinks, cross-layer KV sharing,
batches, and with --pre a rotary embedding that rope_theta and rope_style do not describe.

`--record vo_norm` also writes layers/<l>/vo_norm [H, T] (what criticalkv reads): n[h, i] = ||W_o,h v_i||_1,
token i's value through query head h's D-column block of the attention module's output projection
(`o_proj`, `out_proj`, `dense`, or GPT-2's `c_proj`), in float64 from the float32 v, before any rounding.

    tools/record_hf.py --model Qwen/Qwen2.5-0.5B --prompt "Once upon a time" --generate 64 --out t.h5
"""
import argparse
import datetime
import importlib.util
import math
import os
import sys
import weakref

import h5py
import numpy as np

VERSION = "kvsim-record-hf 1"
DTYPES = ("float32", "float16", "bfloat16")
CHUNK_TOKENS = 256  # traces/FORMAT.md: chunks [1, min(T, 256), D]
QUERY_SHAPED = ("q", "q_pre", "o", "vo_norm")
RECORD_ITEMS = ("vo_norm",)  # --record: derived datasets
SPEC_KEYS = ("model", "architecture", "n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab_size", "rope_theta",
             "rope_style")


class RecordError(Exception):
    """Bad input or a model the recorder cannot record faithfully: one line, exit code 2."""


# ----------------------------------------------------------------------------------------------------------
# The writer: kvtrace v1, write-once (NAME.h5.partial, complete = 1, fsync, rename)
# ----------------------------------------------------------------------------------------------------------

def _file_type(dtype):
    """The on-disk HDF5 type of `dtype` (FORMAT.md, Storage): IEEE float32 or a custom 16-bit float."""
    t = h5py.h5t.IEEE_F32LE.copy()
    if dtype == "float32":
        return t
    spos, epos, esize, msize, bias = (15, 10, 5, 10, 15) if dtype == "float16" else (15, 7, 8, 7, 127)
    t.set_fields(spos, epos, esize, 0, msize)
    t.set_precision(16)
    t.set_size(2)
    t.set_ebias(bias)
    return t


def round_bits(x, dtype):
    """float32 [..] -> uint16 bit patterns of float16 / bfloat16, rounded to nearest, ties to even."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "float16":
        return x.astype(np.float16).view(np.uint16)
    u = x.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _check_finite(x, where):
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        h, t, d = (int(i) for i in bad[0])
        raise RecordError(f"{where}: non-finite value {x[h, t, d]} at head {h}, token {t}, dim {d}")


class TraceFile:
    """Streams one trace. Use as a context manager: leaving it by an exception removes the .partial."""

    def __init__(self, path, spec, dtype="float32", compress=False, device="cpu"):
        if dtype not in DTYPES:
            raise RecordError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        self.path, self.partial = path, path + ".partial"
        if os.path.lexists(path):
            raise RecordError(f"{path}: already exists; traces are write-once (remove it or choose another --out)")
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):
            raise RecordError(f"{path}: directory {parent} does not exist")
        self.spec = _checked_spec(spec, path)
        self.dtype, self.compress = dtype, compress
        self.ftype = _file_type(dtype)
        self.f = h5py.File(self.partial, "w")
        a = self.f.attrs
        s = self.spec
        a["format"] = "kvtrace"
        a["format_version"] = np.int64(1)
        for key in ("model", "architecture", "rope_style"):
            a[key] = str(s[key])
        for key in ("n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab_size"):
            a[key] = np.int64(s[key])
        a["rope_theta"] = np.float64(s["rope_theta"])
        a["stored_dtype"] = dtype
        a["recorder"] = s.get("recorder", VERSION)
        a["device"] = device
        a["synthetic"] = np.int64(0)
        a["created"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        a["complete"] = np.int64(0)
        self.f.create_group("sequences")
        self.n_sequences = 0
        self.seq = None
        self.open = {}  # (kind, layer) -> [dataset id, elements written, elements expected]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False

    def abort(self):
        try:
            if self.f:
                self.f.close()
        finally:
            self.f = None
            if os.path.exists(self.partial):
                os.remove(self.partial)

    def begin_sequence(self, tokens, prefill_len, kinds, source="", text="", name=""):
        T = len(tokens)
        if T < 1 or T > (1 << 24):
            raise RecordError(f"{self.path}: sequence of {T} tokens is outside [1, 2^24]")
        if not 0 <= prefill_len <= T:
            raise RecordError(f"{self.path}: prefill_len = {prefill_len} is outside [0, {T}]")
        name = name or f"{self.n_sequences:04d}"
        g = self.f.create_group(f"sequences/{name}")
        g.attrs["n_tokens"] = np.int64(T)
        g.attrs["prefill_len"] = np.int64(prefill_len)
        g.attrs["source"] = str(source)
        g.create_dataset("tokens", data=np.asarray(tokens, dtype=np.int32))
        if text:
            g.create_dataset("text", data=text, dtype=h5py.string_dtype("utf-8"))
        D = int(self.spec["head_dim"])
        for layer in range(int(self.spec["n_layers"])):
            lg = g.create_group(f"layers/{layer}")
            for kind in kinds:
                heads = int(self.spec["n_heads" if kind in QUERY_SHAPED else "n_kv_heads"])
                shape = (heads, T) if kind == "vo_norm" else (heads, T, D)  # vo_norm: the one rank-2 dataset
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                dcpl.set_chunk((1, min(T, CHUNK_TOKENS)) + shape[2:])
                if self.compress:
                    dcpl.set_shuffle()
                    dcpl.set_deflate(4)
                space = h5py.h5s.create_simple(shape)
                dsid = h5py.h5d.create(lg.id, kind.encode(), self.ftype, space, dcpl=dcpl)
                self.open[(kind, layer)] = [dsid, 0, int(np.prod(shape))]
        self.seq = (name, g, T)
        return name

    def layer_group(self, layer):
        return self.seq[1][f"layers/{layer}"]

    def write(self, kind, layer, x):
        """x: [heads, T, D] ([heads, T] for vo_norm) float32, the whole sequence of one tensor of one layer."""
        name, _, T = self.seq
        entry = self.open.get((kind, layer))
        where = f"{self.path}: /sequences/{name}/layers/{layer}/{kind}"
        if entry is None:
            raise RecordError(f"{where}: not a dataset of this sequence")
        dsid, _, total = entry
        if x.size != total or x.shape[1] != T:
            raise RecordError(f"{where}: got shape {list(x.shape)} for {total} elements with T = {T}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.dtype == "float32":
            _check_finite(x, where)
            dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, x, mtype=h5py.h5t.NATIVE_FLOAT)
        else:
            bits = round_bits(x, self.dtype)
            _check_finite(_bits_to_f32(bits, self.dtype), where + f" (as {self.dtype})")
            dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, bits, mtype=self.ftype)
        entry[1] = total

    def end_sequence(self):
        for (kind, layer), (_, written, total) in self.open.items():
            if written != total:
                raise RecordError(f"{self.path}: sequence {self.seq[0]}: layers/{layer}/{kind} was not recorded "
                                  "(the model never ran that layer's attention)")
        self.open = {}
        self.seq = None
        self.n_sequences += 1

    def finish(self):
        if self.seq is not None:
            self.end_sequence()
        if self.n_sequences == 0:
            raise RecordError(f"{self.path}: no sequence recorded")
        # Every chunk reaches the disk before `complete = 1` does (FORMAT.md, Write-once).
        self.f.flush()
        os.fsync(self.f.id.get_vfd_handle())
        self.f.attrs["complete"] = np.int64(1)
        self.f.flush()
        self.f.close()
        self.f = None
        fd = os.open(self.partial, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        os.rename(self.partial, self.path)
        fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def _bits_to_f32(bits, dtype):
    if dtype == "float16":
        return bits.view(np.float16).astype(np.float32)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _checked_spec(spec, where):
    missing = [k for k in SPEC_KEYS if k not in spec]
    if missing:
        raise RecordError(f"{where}: the model's description lacks {', '.join(missing)}")
    if spec["architecture"] not in ("llama", "gpt2"):
        raise RecordError(f"{where}: architecture {spec['architecture']!r} (expected llama or gpt2)")
    if spec["rope_style"] not in ("interleaved", "half", "none"):
        raise RecordError(f"{where}: rope_style {spec['rope_style']!r} (expected interleaved, half or none)")
    for k in ("n_layers", "n_heads", "n_kv_heads", "head_dim"):
        if not 1 <= int(spec[k]) <= 4096:
            raise RecordError(f"{where}: {k} = {spec[k]} is outside [1, 4096]")
    if int(spec["n_heads"]) % int(spec["n_kv_heads"]):
        raise RecordError(f"{where}: n_heads = {spec['n_heads']} is not a multiple of n_kv_heads = "
                          f"{spec['n_kv_heads']}")
    return dict(spec)


# ----------------------------------------------------------------------------------------------------------
# The hook: one function between each attention module and its kernel
# ----------------------------------------------------------------------------------------------------------

class Tap:
    """Captures q/k/v (and o, q_pre/k_pre) per layer while `active`, and hands each layer to `sink`."""

    def __init__(self, spec, kinds, sink):
        self.spec, self.kinds, self.sink = spec, kinds, sink
        self.layer_of = {}  # id(attention module) -> layer index
        self.delegate = {}  # id(attention module) -> the attention function it used before
        self.default_delegate = None
        self.active = False
        self.T = 0
        self.held = {}  # layer -> {kind: [heads, T, D]}
        self.keys_seen = {}  # layer -> weak reference to the key tensor its attention received

    def attention(self, module, query, key, value, attention_mask, *args, **kwargs):
        layer = self.layer_of.get(id(module))
        if self.active and layer is not None:
            self._capture(layer, module, query, key, value, kwargs)
        fn = self.delegate.get(id(module), self.default_delegate)  # a module outside the decoder: pass through
        out = fn(module, query, key, value, attention_mask, *args, **kwargs)
        if self.active and layer is not None and "o" in self.kinds:
            o = out[0] if isinstance(out, tuple) else out  # [B, T, H, D]
            self.held[layer]["o"] = _heads_first(o[0].transpose(0, 1), "o", layer, self.spec, self.T)
        return out

    def _capture(self, layer, module, query, key, value, kwargs):
        where = f"layer {layer}"
        for what in ("softcap", "logit_softcapping"):
            if kwargs.get(what) is not None:
                raise RecordError(f"{where}: soft-capped attention logits ({what} = {kwargs[what]}): the trace "
                                  "format cannot describe them")
        if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
            raise RecordError(f"{where}: learned attention sinks: the trace format cannot describe them")
        window = kwargs.get("sliding_window")
        if window is not None and self.T > int(window):
            raise RecordError(f"{where}: sliding-window attention (window {window}) over {self.T} tokens: the "
                              f"trace format has no window; record at most {window} tokens")
        if query.shape[0] != 1:
            raise RecordError(f"{where}: batch of {query.shape[0]} sequences (the recorder runs one at a time)")
        if query.shape[2] != self.T or key.shape[2] != self.T:
            raise RecordError(f"{where}: attention over {key.shape[2]} keys for {query.shape[2]} queries, "
                              f"expected {self.T} and {self.T} (a cache or a prefix the recorder did not see)")
        if "q" in self.held.get(layer, {}) or "done" in self.held.get(layer, {}):
            raise RecordError(f"{where}: attention ran twice in one forward pass")
        # Another layer's keys still alive at the same address are shared keys (a freed tensor's address
        # is reused by the allocator, so only live ones count).
        for other, ref in self.keys_seen.items():
            k = ref()
            if k is not None and k.data_ptr() == key.data_ptr():
                raise RecordError(f"{where}: reuses layer {other}'s keys (cross-layer KV sharing): the trace "
                                  "format stores one cache per layer")
        self.keys_seen[layer] = weakref.ref(key)
        D = int(self.spec["head_dim"])
        scaling = kwargs.get("scaling")
        if scaling is None:
            scaling = gpt2_scaling(module, D)
        fold = float(scaling) * math.sqrt(D)
        if abs(fold - 1.0) < 1e-12:  # D ** -0.5 * sqrt(D) is 1 up to rounding
            fold = 1.0
        got = self.held.setdefault(layer, {})
        got["q"] = _heads_first(query[0], "q", layer, self.spec, self.T) * np.float32(fold)
        got["k"] = _heads_first(key[0], "k", layer, self.spec, self.T)
        got["v"] = _heads_first(value[0], "v", layer, self.spec, self.T)
        got["q_scale"] = fold
        if "vo_norm" in self.kinds:
            got["vo_norm"] = vo_norm(output_projection(module, layer, self.spec), got["v"])

    def layer_done(self, module):
        """Forward hook of an attention module: its layer is complete; write it."""
        layer = self.layer_of.get(id(module))
        if not self.active or layer is None:
            return
        got = self.held.pop(layer, None)
        if got is None or "q" not in got:
            raise RecordError(f"layer {layer}: {type(module).__name__} ran without calling the attention "
                              "function the recorder hooked: cannot record this model")
        unrotated = self.spec["rope_style"] == "none"  # q_pre, k_pre are q, k (record's sink copies them)
        missing = [k for k in self.kinds if k not in got and not (k.endswith("_pre") and unrotated)]
        if missing:
            raise RecordError(f"layer {layer}: {type(module).__name__} did not produce {', '.join(missing)}")
        if "q_pre" in self.kinds and "q_pre" in got and got["q_scale"] != 1.0:
            got["q_pre"] = got["q_pre"] * np.float32(got["q_scale"])
        self.sink(layer, got)
        self.held[layer] = {"done": True}


def output_projection(module, layer, spec):
    """The attention module's output projection W_o as float64 [d_model, H·D] (out, in)."""
    torch = _torch()
    w = None
    for name in ("o_proj", "out_proj", "dense"):
        m = getattr(module, name, None)
        if isinstance(getattr(m, "weight", None), torch.Tensor):
            w = m.weight.detach().to(device="cpu", dtype=torch.float64).numpy()  # nn.Linear: [out, in]
            break
    c = getattr(module, "c_proj", None)
    if w is None and isinstance(getattr(c, "weight", None), torch.Tensor):
        w = c.weight.detach().to(device="cpu", dtype=torch.float64).numpy().T  # GPT-2 Conv1D: [in, out]
    if w is None:
        raise RecordError(f"layer {layer}: --record vo_norm: {type(module).__name__} has no o_proj, out_proj, dense or "
                          "c_proj weight to carry the values through")
    HD = int(spec["n_heads"]) * int(spec["head_dim"])
    if w.ndim != 2 or w.shape[1] != HD:
        raise RecordError(f"layer {layer}: --record vo_norm: output projection of shape {list(w.shape)}, expected "
                          f"[d_model, n_heads * head_dim = {HD}]")
    return w


def vo_norm(wo, v, block=1024):
    """wo [d_model, H·D] float64, v [Hkv, T, D] float32 -> [H, T] float32: sum_r |(W_o,h v_i)_r|."""
    Hkv, T, D = v.shape
    H = wo.shape[1] // D
    G = H // Hkv
    out = np.empty((H, T), np.float64)
    for h in range(H):
        w = wo[:, h * D:(h + 1) * D].T  # [D, d_model]
        for a in range(0, T, block):  # [block, d_model] at a time
            out[h, a:a + block] = np.abs(v[h // G, a:a + block].astype(np.float64) @ w).sum(axis=1)
    return out.astype(np.float32)


def _heads_first(x, kind, layer, spec, T):
    """A torch tensor [heads, T, D] -> float32 numpy, checked against the model's description."""
    heads = int(spec["n_heads" if kind in QUERY_SHAPED else "n_kv_heads"])
    want = (heads, T, int(spec["head_dim"]))
    if tuple(x.shape) != want:
        raise RecordError(f"layer {layer} {kind}: shape {list(x.shape)}, expected {list(want)} "
                          "(n_heads, n_kv_heads, head_dim of the model's config)")
    return x.detach().to(device="cpu", dtype=_torch().float32).numpy()


def gpt2_scaling(module, D):
    """The logit scale an attention function without a `scaling` argument uses (GPT-2's flags)."""
    s = D ** -0.5 if getattr(module, "scale_attn_weights", True) else 1.0
    if getattr(module, "scale_attn_by_inverse_layer_idx", False):
        s /= float(module.layer_idx + 1)
    return s


def _torch():
    import torch
    return torch


# ----------------------------------------------------------------------------------------------------------
# Model description and installation of the hook
# ----------------------------------------------------------------------------------------------------------

FAMILIES = {  # HF model_type -> (trace architecture, rope_style)
    "llama": ("llama", "half"), "mistral": ("llama", "half"), "qwen2": ("llama", "half"),
    "qwen3": ("llama", "half"), "gemma2": ("llama", "half"), "gemma3": ("llama", "half"),
    "gemma3_text": ("llama", "half"), "phi3": ("llama", "half"), "gpt2": ("gpt2", "none"),
}


def attention_modules(model):
    """[(layer, module)] of the modules that compute one layer's self-attention, in layer order."""
    found = []
    for _, m in model.named_modules():
        cls = type(m).__name__
        # transformers' decoder attention carries layer_idx (a vision tower's attention does not)
        if cls.endswith("Attention") and (hasattr(m, "attention_function") or (
                hasattr(m, "layer_idx") and any(hasattr(m, p) for p in ("q_proj", "qkv_proj", "c_attn")))):
            found.append(m)
    out = []
    for i, m in enumerate(found):
        out.append((int(getattr(m, "layer_idx", i) if getattr(m, "layer_idx", None) is not None else i), m))
    return sorted(out, key=lambda p: p[0])


def describe_hf(model, name):
    """The trace's root attributes of a transformers model, or a one-line refusal."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    mtype = getattr(config, "model_type", "?")
    if mtype not in FAMILIES:
        raise RecordError(f"{name}: model_type {mtype!r} is not one the recorder knows "
                          f"({', '.join(sorted(FAMILIES))})")
    arch, style = FAMILIES[mtype]
    if getattr(config, "num_kv_shared_layers", 0):
        raise RecordError(f"{name}: cross-layer KV sharing (num_kv_shared_layers = {config.num_kv_shared_layers})")
    if getattr(config, "attn_logit_softcapping", None) is not None:
        raise RecordError(f"{name}: soft-capped attention logits (attn_logit_softcapping = "
                          f"{config.attn_logit_softcapping}): the trace format cannot describe them")
    H = getattr(config, "num_attention_heads", None) or config.n_head
    L = getattr(config, "num_hidden_layers", None) or config.n_layer
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    D = getattr(config, "head_dim", None) or hidden // H
    Hkv = getattr(config, "num_key_value_heads", None) or H
    theta, plain = _rope(config, style)
    return {"model": name, "architecture": arch, "n_layers": L, "n_heads": H, "n_kv_heads": Hkv, "head_dim": D,
            "vocab_size": int(getattr(config, "vocab_size", 0) or 0), "rope_theta": theta, "rope_style": style,
            "pre_refused": plain}


def _rope(config, style):
    """(rope_theta, None or why rope_theta/rope_style do not describe the rotation, for --pre)."""
    if style == "none":
        return 10000.0, None
    params = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in params:  # per layer type (transformers 5)
        params = params["full_attention"]
    theta = getattr(config, "rope_theta", None) or params.get("rope_theta") or 10000.0
    why = None
    scaling = getattr(config, "rope_scaling", None) or params
    rtype = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rtype not in (None, "default"):
        why = f"rope scaling {rtype!r}"
    if getattr(config, "partial_rotary_factor", 1.0) not in (None, 1.0):
        why = f"partial_rotary_factor = {config.partial_rotary_factor}"
    local = getattr(config, "rope_local_base_freq", None)
    if local is not None and local != theta:
        why = f"per-layer rope theta ({local} local, {theta} global)"
    return float(theta), why


class Hooked:
    """Context manager: installs the tap on every attention module of `model`, removes it on exit."""

    def __init__(self, model, tap, name):
        self.model, self.tap, self.name = model, tap, name
        self.handles = []
        self.restore = []

    def __enter__(self):
        self.before = None
        try:
            return self._install()
        except BaseException:
            self.__exit__()
            raise

    def _install(self):
        mods = attention_modules(self.model)
        L = int(self.tap.spec["n_layers"])
        if [l for l, _ in mods] != list(range(L)):
            raise RecordError(f"{self.name}: cannot hook: found attention modules for layers {[l for l, _ in mods]}, "
                              f"expected 0..{L - 1} (a model whose attention modules the recorder does not know)")
        if all(hasattr(m, "attention_function") for _, m in mods):
            for _, m in mods:
                self.tap.delegate[id(m)] = m.attention_function
                self.restore.append((m, m.attention_function))
                m.attention_function = self.tap.attention
        else:
            self._install_hf(mods)
        for layer, m in mods:
            self.tap.layer_of[id(m)] = layer
            self.handles.append(m.register_forward_hook(lambda mod, inp, out: self.tap.layer_done(mod)))
            if "q_pre" in self.tap.kinds:
                self._hook_pre(layer, m)
        return self

    def _install_hf(self, mods):
        try:
            from transformers import AttentionInterface
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        except ImportError:
            raise RecordError(f"{self.name}: cannot hook: its attention modules have no `attention_function` and "
                              "transformers (>= 4.48, AttentionInterface) is not importable") from None
        config = getattr(self.model, "config", None)
        if not hasattr(config, "_attn_implementation"):
            raise RecordError(f"{self.name}: cannot hook: its attention modules have no `attention_function` and it "
                              "is not a transformers model")
        raw = config._attn_implementation
        before = raw or "eager"
        if before == "eager":
            mod = sys.modules[type(mods[0][1]).__module__]
            fn = getattr(mod, "eager_attention_forward", None)
        else:
            fn = ALL_ATTENTION_FUNCTIONS.get(before)
        if fn is None:
            raise RecordError(f"{self.name}: cannot hook: attention implementation {before!r} has no function "
                              "in transformers' AttentionInterface")
        for _, m in mods:
            self.tap.delegate[id(m)] = fn
        self.tap.default_delegate = fn
        AttentionInterface.register("kvsim_record", self.tap.attention)
        try:
            from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
            mask = ALL_MASK_ATTENTION_FUNCTIONS.get(before)
            if mask is not None:
                AttentionMaskInterface.register("kvsim_record", mask)
        except ImportError:  # transformers < 4.53 builds masks by the model's own rules
            pass
        self.before = raw
        configs = {id(c): c for c in [config] + [getattr(m, "config", config) for _, m in mods]}.values()
        for c in configs:
            self.restore.append((c, None))
            c._attn_implementation = "kvsim_record"

    def _hook_pre(self, layer, m):
        """q_pre/k_pre: the output of the q/k norm when the module has one, else of the projection."""
        if self.tap.spec.get("pre_refused"):
            raise RecordError(f"{self.name}: --pre: {self.tap.spec['pre_refused']}, which rope_theta and "
                              "rope_style cannot describe")
        D = int(self.tap.spec["head_dim"])
        H, Hkv = int(self.tap.spec["n_heads"]), int(self.tap.spec["n_kv_heads"])
        if self.tap.spec["rope_style"] == "none":
            return  # no rotation: q_pre and k_pre are q and k (Tap.sink's caller copies them)

        def put(kind, heads):
            def hook(mod, inp, out):
                if self.tap.active:
                    x = out.reshape(1, self.tap.T, heads, D)[0].transpose(0, 1)
                    self.tap.held.setdefault(layer, {})[kind] = _heads_first(x, kind, layer, self.tap.spec,
                                                                             self.tap.T)
            return hook

        if hasattr(m, "q_proj") and hasattr(m, "k_proj"):
            qm = getattr(m, "q_norm", None) or m.q_proj
            km = getattr(m, "k_norm", None) or m.k_proj
            self.handles.append(qm.register_forward_hook(put("q_pre", H)))
            self.handles.append(km.register_forward_hook(put("k_pre", Hkv)))
        elif hasattr(m, "qkv_proj"):
            def split(mod, inp, out):
                if self.tap.active:
                    x = out.reshape(1, self.tap.T, -1)[0]
                    q, k = x[:, :H * D], x[:, H * D:(H + Hkv) * D]
                    got = self.tap.held.setdefault(layer, {})
                    got["q_pre"] = _heads_first(q.reshape(self.tap.T, H, D).transpose(0, 1), "q_pre", layer,
                                                self.tap.spec, self.tap.T)
                    got["k_pre"] = _heads_first(k.reshape(self.tap.T, Hkv, D).transpose(0, 1), "k_pre", layer,
                                                self.tap.spec, self.tap.T)
            self.handles.append(m.qkv_proj.register_forward_hook(split))
        else:
            raise RecordError(f"{self.name}: --pre: layer {layer}'s {type(m).__name__} has no q_proj/k_proj or "
                              "qkv_proj to read the keys before the rotation from")

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        for obj, value in self.restore:
            if value is None:
                obj._attn_implementation = self.before
                self.tap.active = False
            else:
                obj.attention_function = value
        return False


# ----------------------------------------------------------------------------------------------------------
# Recording
# ----------------------------------------------------------------------------------------------------------

def _logits(out):
    return out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, tuple) else out)


def greedy(model, ids, n, device):
    """ids + n tokens of greedy (argmax) continuation, as `kvsim record --generate N` does by default."""
    torch = _torch()
    ids = list(ids)
    if n <= 0:
        return ids
    with torch.no_grad():
        hf = hasattr(model, "generation_config")
        x = torch.tensor([ids], device=device)
        past = None
        for _ in range(n):
            if hf:
                out = model(input_ids=x, past_key_values=past, use_cache=True)
                past = out.past_key_values
            else:
                out = model(torch.tensor([ids], device=device))
            nxt = int(_logits(out)[0, -1].argmax())
            ids.append(nxt)
            x = torch.tensor([[nxt]], device=device)
    return ids


def record(model, spec, prompt_ids, out, generate=0, dtype="float32", compress=False, pre=False, with_o=False,
           text_of=None, source="", device="cpu", items=()):
    """Records one sequence (prompt + `generate` greedy tokens) of `model` into the new trace `out`."""
    torch = _torch()
    name = spec.get("model", "model")
    if dtype not in DTYPES:
        raise RecordError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if os.path.lexists(out):
        raise RecordError(f"{out}: already exists; traces are write-once (remove it or choose another --out)")
    if len(prompt_ids) < 1:
        raise RecordError(f"{name}: empty prompt (no tokens)")
    if generate < 0:
        raise RecordError(f"--generate = {generate} must be >= 0")
    bad = [i for i in items if i not in RECORD_ITEMS]
    if bad:
        raise RecordError(f"--record: unknown item {bad[0]!r} (choose: {', '.join(RECORD_ITEMS)})")
    model.eval()
    ids = greedy(model, prompt_ids, generate, device)
    kinds = ["q", "k", "v"] + (["q_pre", "k_pre"] if pre else []) + (["o"] if with_o else []) + \
        [i for i in RECORD_ITEMS if i in items]
    with TraceFile(out, spec, dtype, compress, device_name(device)) as trace:
        def sink(layer, got):
            if pre and spec["rope_style"] == "none":
                got["q_pre"], got["k_pre"] = got["q"], got["k"]
            for kind in kinds:
                trace.write(kind, layer, got[kind])
            if got["q_scale"] != 1.0:
                trace.layer_group(layer).attrs["q_scale"] = np.float64(got["q_scale"])

        tap = Tap(spec, kinds, sink)
        trace.begin_sequence(ids, len(prompt_ids), kinds, source=source, text=text_of(ids) if text_of else "")
        with Hooked(model, tap, name), torch.no_grad():
            tap.T, tap.active = len(ids), True
            x = torch.tensor([ids], device=device)
            model(input_ids=x, use_cache=False) if hasattr(model, "generation_config") else model(x)
            tap.active = False
        trace.finish()
    return ids


def device_name(device):
    if str(device).startswith("cuda"):
        return "cuda:" + _torch().cuda.get_device_name(_torch().device(device))
    return "cpu"


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------

def load_model(arg, torch_dtype, device):
    """(model, spec, tokenizer or None) from a FILE.py:FACTORY or a transformers model directory / hub id."""
    torch = _torch()
    if ".py:" in arg:
        path, factory = arg.rsplit(":", 1)
        if not os.path.isfile(path):
            raise RecordError(f"--model {arg}: {path} does not exist")
        mod_spec = importlib.util.spec_from_file_location("kvsim_user_model", path)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
        if not hasattr(mod, factory):
            raise RecordError(f"--model {arg}: {path} has no function {factory}")
        model = getattr(mod, factory)()
        spec = getattr(model, "kvsim_spec", None)
        if not isinstance(spec, dict):
            raise RecordError(f"--model {arg}: the model has no kvsim_spec dict (the trace's root attributes)")
        return model.to(device), dict(spec), getattr(model, "kvsim_tokenizer", None)
    try:
        import transformers
    except ImportError:
        raise RecordError(f"--model {arg}: loading a Hugging Face model needs transformers, which is not "
                          "importable here (or pass FILE.py:FACTORY)") from None
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[torch_dtype]
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(arg, torch_dtype=dt)
        tok = transformers.AutoTokenizer.from_pretrained(arg)
    except (OSError, ValueError) as e:
        raise RecordError(f"--model {arg}: {str(e).splitlines()[0]}") from None
    spec = describe_hf(model, arg)
    spec["recorder"] = f"{VERSION} (transformers {transformers.__version__}, torch {torch.__version__})"
    return model.to(device), spec, tok


def decode(tok, ids):
    """The sequence's text: a transformers tokenizer drops BOS/EOS markers; any other decodes as it does."""
    try:
        return tok.decode(ids, skip_special_tokens=True)
    except TypeError:
        return tok.decode(ids)


def parse_ids(text):
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise RecordError(f"--prompt {text!r}: with --ids the prompt is token ids separated by spaces") from None


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="kvsim-record-hf",
        description="Record a kvtrace v1 file (traces/FORMAT.md) from a Hugging Face causal LM (Llama, Mistral, "
                    "Qwen2, Qwen3, Gemma 2/3, Phi-3, GPT-2) or your own PyTorch module, by hooking its attention.")
    ap.add_argument("--model", required=True,
                    help="transformers model directory or hub id, or FILE.py:FACTORY returning a torch module "
                         "with kvsim_spec and attention_function (tools/record_hf.py's docstring)")
    ap.add_argument("--prompt", required=True, help="prompt text (with --ids: token ids)")
    ap.add_argument("--ids", action="store_true", help="--prompt is token ids")
    ap.add_argument("--generate", type=int, default=0, help="continue the prompt by N greedy tokens (default 0)")
    ap.add_argument("--out", required=True, help="output trace (.h5); refused if it exists")
    ap.add_argument("--dtype", default="float32", help="stored dtype: float32, float16, bfloat16 (default float32)")
    ap.add_argument("--torch-dtype", default="float32", help="dtype the model runs in: float32, bfloat16, float16")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    ap.add_argument("--compress", action="store_true", help="gzip + shuffle compression")
    ap.add_argument("--pre", action="store_true", help="also record q_pre and k_pre (before the rotation)")
    ap.add_argument("--with-o", action="store_true", help="also record o, the model's attention output")
    ap.add_argument("--record", default="", metavar="ITEMS",
                    help="also record these derived datasets (comma-separated): vo_norm = ||W_o,h v_i||_1 per query "
                    "head and token [H, T] (criticalkv reads it)")
    ap.add_argument("--source", default="", help="the sequence's `source` attribute")
    ap.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    a = ap.parse_args(argv)
    out_existed = os.path.lexists(a.out)
    try:
        if a.dtype not in DTYPES:
            raise RecordError(f"--dtype {a.dtype!r}: expected one of {', '.join(DTYPES)}")
        if a.torch_dtype not in DTYPES:
            raise RecordError(f"--torch-dtype {a.torch_dtype!r}: expected one of {', '.join(DTYPES)}")
        if out_existed:
            raise RecordError(f"{a.out}: already exists; traces are write-once (remove it or choose another --out)")
        model, spec, tok = load_model(a.model, a.torch_dtype, a.device)
        if a.ids:
            ids = parse_ids(a.prompt)
        elif tok is None:
            raise RecordError(f"--model {a.model}: no tokenizer (kvsim_tokenizer); pass token ids with --ids")
        else:
            ids = list(tok(a.prompt)["input_ids"]) if callable(tok) else list(tok.encode(a.prompt))
        text_of = (lambda xs: decode(tok, xs)) if tok is not None else None
        vocab = int(spec.get("vocab_size", 0))
        bad = [t for t in ids if t < 0 or (vocab and t >= vocab)]
        if bad:
            raise RecordError(f"--prompt: token id {bad[0]} is outside [0, vocab_size = {vocab})")
        ids = record(model, spec, ids, a.out, a.generate, a.dtype, a.compress, a.pre, a.with_o, text_of,
                     a.source or ("ids" if a.ids else "prompt"), a.device,
                     [i for i in a.record.split(",") if i] if a.record else ())
    except RecordError as e:
        print(f"kvsim-record-hf: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line for the user, never a traceback
        if not out_existed and os.path.exists(a.out + ".partial"):
            os.remove(a.out + ".partial")
        print(f"kvsim-record-hf: error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              file=sys.stderr)
        return 1
    if not a.quiet:
        print(f"kvsim-record-hf: wrote {a.out}: {len(ids)} tokens, {spec['n_layers']} layers", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
