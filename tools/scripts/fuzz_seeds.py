#!/usr/bin/python3
"""Writes the fuzz harnesses' fixtures and seed corpora (tests/fuzz/fixtures/, tests/fuzz/corpus/NAME/).

Run from the project root after building: /usr/bin/python3 tools/scripts/fuzz_seeds.py [path/to/kvsim]
Every file is small (a few KB): traces are slices of the embedded traces/samples/stories260K.h5 or
tiny synthetic traces; the safetensors, llama2.c and tokenizer seeds are synthetic, written here (no
weights from ../shared/models are copied). Re-running replaces the files; fixtures/tiny.h5 changes
(its `created` attribute), and the sidecar seed, keyed by its content hash, is rewritten with it.
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FUZZ = os.path.join(ROOT, "tests", "fuzz")
KVSIM = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "kvsim")
SAMPLE = os.path.join(ROOT, "traces", "samples", "stories260K.h5")


def corpus(name):
    d = os.path.join(FUZZ, "corpus", name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def put(path, data):
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def kvsim(*args):
    subprocess.run([KVSIM, *args], check=True)


# ---- fixtures -------------------------------------------------------------------------------
fix = os.path.join(FUZZ, "fixtures")
os.makedirs(os.path.join(fix, "hf"), exist_ok=True)
# tiny shape, first layer: L=1, H=4, Hkv=2, D=16; T=12, P=6, float16.
kvsim("synth", "--shape", "tiny", "--tokens", "12", "--layers", "1", "--seed", "1", "--dtype", "float16", "--force", "--quiet",
      "--out", os.path.join(fix, "tiny.h5"))


def safetensors(tensors, dtype="F32", metadata=None):
    """tensors: list of (name, shape, float array). Header padded to 8 bytes, as the format says."""
    header, blobs, off = {}, [], 0
    np_type = {"F32": "<f4", "F16": "<f2"}[dtype]
    for name, shape, values in tensors:
        b = np.asarray(values, dtype=np_type).reshape(shape).tobytes()
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


rng = np.random.default_rng(7)
dim, hid, H, Hkv, D, V = 8, 16, 2, 1, 4, 16
shapes = [("model.embed_tokens.weight", (V, dim)), ("model.layers.0.input_layernorm.weight", (dim,)),
          ("model.layers.0.self_attn.q_proj.weight", (H * D, dim)),
          ("model.layers.0.self_attn.k_proj.weight", (Hkv * D, dim)),
          ("model.layers.0.self_attn.v_proj.weight", (Hkv * D, dim)),
          ("model.layers.0.self_attn.o_proj.weight", (dim, H * D)),
          ("model.layers.0.post_attention_layernorm.weight", (dim,)),
          ("model.layers.0.mlp.gate_proj.weight", (hid, dim)), ("model.layers.0.mlp.up_proj.weight", (hid, dim)),
          ("model.layers.0.mlp.down_proj.weight", (dim, hid)), ("model.norm.weight", (dim,))]
tensors = [(n, s, rng.normal(0, 0.02, int(np.prod(s)))) for n, s in shapes]
put(os.path.join(fix, "hf", "model.safetensors"), safetensors(tensors, metadata={"format": "pt"}))
config = {"architectures": ["LlamaForCausalLM"], "hidden_size": dim, "intermediate_size": hid,
          "num_hidden_layers": 1, "num_attention_heads": H, "num_key_value_heads": Hkv, "vocab_size": V,
          "max_position_embeddings": 32, "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
          "hidden_act": "silu"}

# ---- trace: slices of the embedded trace, and the synthetic fixture -------------------------
d = corpus("trace")


def slice_trace(out, T, compress):
    with h5py.File(SAMPLE, "r") as src, h5py.File(out, "w") as dst:
        for k in src.attrs:
            dst.attrs.create(k, src.attrs[k], dtype=src.attrs.get_id(k).dtype)
        dst.attrs["n_layers"] = np.int64(1)
        name = sorted(src["sequences"])[0]
        s, g = src["sequences"][name], dst.create_group("sequences/" + name)
        for k in s.attrs:
            g.attrs.create(k, s.attrs[k], dtype=s.attrs.get_id(k).dtype)
        g.attrs["n_tokens"] = np.int64(T)
        g.attrs["prefill_len"] = np.int64(T // 2)
        if "context_len" in g.attrs:
            g.attrs["context_len"] = np.int64(min(int(g.attrs["context_len"]), T // 2))
        g.create_dataset("tokens", data=s["tokens"][:T])
        for kind in ("q", "k", "v"):
            x = s["layers/0/" + kind][:, :T, :]
            kw = {"chunks": (1, T, x.shape[2]), "compression": "gzip", "shuffle": True} if compress else {}
            g.create_dataset("layers/0/" + kind, data=x, dtype=x.dtype, **kw)


slice_trace(os.path.join(d, "stories_T8.h5"), 8, False)
slice_trace(os.path.join(d, "stories_T8_gzip.h5"), 8, True)
shutil.copy(os.path.join(fix, "tiny.h5"), os.path.join(d, "synth_tiny_f16.h5"))
kvsim("synth", "--shape", "tiny", "--tokens", "4", "--seed", "2", "--layers", "1", "--dtype", "bfloat16",
      "--compress", "--pre", "--force", "--quiet", "--out", os.path.join(d, "synth_bf16_pre.h5"))

# ---- trace_attr: attribute-edit programs (tests/fuzz/fuzz_trace_attr.cpp) -----------------------
d = corpus("trace_attr")
names = ["format", "format_version", "complete", "model", "architecture", "n_layers", "n_heads", "n_kv_heads",
         "head_dim", "vocab_size", "rope_theta", "rope_style", "stored_dtype", "recorder", "device", "synthetic",
         "created", "n_tokens", "prefill_len", "context_len", "source"]


def op(target, action, name, value=b""):
    return bytes([target + 4 * action, names.index(name)]) + value


i64 = lambda v: struct.pack("<q", v)
put(os.path.join(d, "none"), b"")
put(os.path.join(d, "n_tokens_25"), op(1, 1, "n_tokens", i64(25)))
put(os.path.join(d, "prefill_24"), op(1, 1, "prefill_len", i64(24)))
put(os.path.join(d, "context_len_5"), op(1, 1, "context_len", i64(5)))
put(os.path.join(d, "n_layers_1"), op(0, 1, "n_layers", i64(1)))
put(os.path.join(d, "head_dim_float"), op(0, 2, "head_dim", struct.pack("<d", 16.0)))
put(os.path.join(d, "format_fixed"), op(0, 3, "format", bytes([7]) + b"kvtrace"))
put(os.path.join(d, "dtype_vlen"), op(0, 4, "stored_dtype", bytes([7]) + b"float16"))
put(os.path.join(d, "complete_array"), op(0, 5, "complete", bytes([1]) + struct.pack("<i", 1)))
put(os.path.join(d, "synthetic_u8"), op(0, 6, "synthetic", bytes([1])))
put(os.path.join(d, "complete_null"), op(0, 7, "complete"))
put(os.path.join(d, "delete_source"), op(1, 0, "source"))
put(os.path.join(d, "k_attr_and_theta"), op(2, 1, "n_tokens", i64(-1)) + op(0, 2, "rope_theta", struct.pack("<d", 0.0)))

# ---- spec ---------------------------------------------------------------------------------------
d = corpus("spec")
specs = ["full", "window:budget=8", "streaming:budget=8,sinks=2", "streaming:budget=8,prefix=1",
         "h2o:budget=8,recent=2,norm=mean", "tova:budget=8", "scissorhands:budget=8,recent=2", "snapkv:budget=8,window=4",
         "pyramidkv:budget=8,window=4", "knorm:budget=8", "random:budget=8,seed=3", "entropy_merge:budget=8,sinks=2,recent=2",
         "cam:budget=8", "kvmerger:budget=8,sinks=2,recent=2", "cms_topk:budget=8,width=16,depth=2",
         "cms_aggregate:budget=8,width=8,depth=2,sinks=2,recent=2", "quant:bits=4,axis=token,group=16", "kivi:bits=2",
         "nf4:dq=1", "h2o:ratio=0.5+kivi:bits=4", "window:budget=8+quant:bits=8", "oracle_topk:budget=8",
         "quest:budget=8,page=4,dense_layers=", "sparq:r=4,k=4", "magicpig:K=4,L=2,local=2,dense_layers=", "pqcache:budget=8,m=2,bits=2,sinks=1,local=1",
         "rocketkv:budget=8,window=4", "shadowkv:budget=4,chunk=2,rank=2,local=0,outliers=0", "h2o:budget=8,gqa=max",
         "window:ratio=0.5,sinks=2"]
for i, s in enumerate(specs):
    put(os.path.join(d, "%02d" % i), s)

# ---- sweep: the project's configs and a small one with every grid form --------------------------
d = corpus("sweep")
for f in sorted(os.listdir(os.path.join(ROOT, "configs"))):
    # The harness has no traces beside its config: a plain name passes where a glob would match nothing.
    text = open(os.path.join(ROOT, "configs", f)).read()
    put(os.path.join(d, f), re.sub(r"(?m)^traces:.*$", "traces: [t.h5]", text))
put(os.path.join(d, "grid_forms.yaml"), """name: forms
traces: [t.h5]
sequences: [a, b]
prefill: [trace, 8]
protocol: [evict, prefill]
stride: 2
strategies:
  - name: h2o
    grid:
      budget: &b [8, 16]
      recent: {from: 2, to: 6, step: 2}
      norm: sum
    codecs: [none, {name: kivi, grid: {bits: [2, 4]}}]
  - name: window
    grid: {budget: {pow2: [3, 5]}, ratio: {from: 0.1, to: 0.3, num: 3}}
  - name: streaming
    grid: {budget: *b}
""")

# ---- safetensors and hf_config -----------------------------------------------------------------
d = corpus("safetensors")
shutil.copy(os.path.join(fix, "hf", "model.safetensors"), os.path.join(d, "tiny_llama_f32.safetensors"))
put(os.path.join(d, "two_f16.safetensors"), safetensors([("a", (2, 3), np.arange(6)), ("b", (4,), np.ones(4))], "F16"))
put(os.path.join(d, "empty.safetensors"), safetensors([]))
d = corpus("hf_config")
put(os.path.join(d, "llama.json"), json.dumps(config, indent=1))
put(os.path.join(d, "qwen2_bias.json"), json.dumps({**config, "architectures": ["Qwen2ForCausalLM"]}))
put(os.path.join(d, "llama3_rope.json"), json.dumps({**config, "rope_scaling": {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16}}))
put(os.path.join(d, "mistral_linear.json"), json.dumps({**config, "architectures": ["MistralForCausalLM"],
                                                         "sliding_window": 16, "head_dim": 4,
                                                         "rope_scaling": {"type": "linear", "factor": 2.0}}))

# ---- llama2c: tiny checkpoints in the exact layout llama2c.cpp reads -------------------------
d = corpus("llama2c")


def llama2c(dim, hid, L, H, Hkv, V, seq_len, tied=True):
    hd, kv = dim // H, Hkv * (dim // H)
    n = V * dim + L * dim + L * dim * dim + 2 * L * kv * dim + L * dim * dim + L * dim + 3 * L * hid * dim + dim
    n += seq_len * hd + (0 if tied else V * dim)
    head = struct.pack("<7i", dim, hid, L, H, Hkv, V if tied else -V, seq_len)
    return head + rng.normal(0, 0.02, n).astype("<f4").tobytes()


put(os.path.join(d, "tied.bin"), llama2c(8, 16, 1, 2, 1, 16, 4))
put(os.path.join(d, "untied_gqa.bin"), llama2c(8, 8, 2, 4, 2, 12, 2, tied=False))
put(os.path.join(d, "header_only.bin"), struct.pack("<7i", 8, 16, 1, 2, 1, 16, 4))

# ---- tokenizer: llama2.c tokenizer.bin (<unk>, <s>, </s>, 256 byte tokens, then merges) ---------
d = corpus("tokenizer")


def tokenizer(extra):
    pieces = [(0.0, b"<unk>"), (0.0, b"<s>"), (0.0, b"</s>")]
    pieces += [(0.0, ("<0x%02X>" % b).encode()) for b in range(256)]
    pieces += [(float(-i), p.encode()) for i, p in enumerate(extra)]
    out = struct.pack("<i", max(len(p) for _, p in pieces))
    for score, p in pieces:
        out += struct.pack("<fi", score, len(p)) + p
    return out


put(os.path.join(d, "bytes_only.bin"), tokenizer([]))
put(os.path.join(d, "merges.bin"), tokenizer([" ", "e", "t", "n", "o", " t", "he", " the", "on", "ce", " on", "up",
                                              "\u00e9", "\u20ac", "Once", " upon", " a", " time", ","]))

# ---- sidecar: the valid .kvstats of fixtures/tiny.h5 (sequence 0, backend ref) ------------------
d = corpus("sidecar")
with tempfile.TemporaryDirectory() as tmp:
    kvsim("run", "--trace", os.path.join(fix, "tiny.h5"), "--strategy", "window:budget=8", "--backend", "ref",
          "--stats-cache", tmp, "--quiet")
    made = [f for f in os.listdir(tmp) if f.endswith(".kvstats")]
    assert len(made) == 1, made
    shutil.copy(os.path.join(tmp, made[0]), os.path.join(d, "tiny_s0_ref.sidecar"))  # not *.kvstats: .gitignore
print("fuzz seeds written under", os.path.relpath(FUZZ, ROOT))
