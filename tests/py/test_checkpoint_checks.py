"""Checkpoints that disagree with themselves are refused in one line with exit 2 (issue 20, item 15).

Built from the real stories260K (../shared/models: 5 layers, dim 64, vocab 512), copied to a temp
folder, converted to the Hugging Face layout by `kvsim convert` and then edited:
- config.json num_hidden_layers = 4 over 5 layers of weights (loaded the first 4 silently before:
  a different model), and a llama2.c header saying 4 layers;
- a NaN or an Inf weight, in the llama2.c file and in model.safetensors;
- safetensors shapes and offsets that are not exact non-negative integers ([512.5, 64], [-512, 64],
  offsets [0.5, N]): JSON numbers that nlohmann would truncate or wrap;
- a shard index whose weight_map names ../outside.safetensors or an absolute path.
The unedited copies load (generate exits 0), so each refusal is the edit's.
Skipped (exit 77) without ../shared/models. Run:
    /usr/bin/python3 tests/py/test_checkpoint_checks.py --kvsim build/kvsim"""
import json
import os
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvsim_testlib as lib  # noqa: E402
from test_model_errors import read_st, write_st  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "..", "..", "..", "shared", "models", "stories260K")
MODEL = os.path.join(MODELS, "stories260K.bin")
HEADER = 28  # 7 int32 (../shared/models/README.md)


def main():
    args = lib.parse_args()
    k = os.path.abspath(args.kvsim)
    if not os.path.exists(MODEL):
        lib.skip("../shared/models not found")
    s = lib.Suite()
    with lib.tempdir() as d:
        model = os.path.join(d, "stories260K.bin")
        shutil.copy(MODEL, model)
        hf = os.path.join(d, "hf")
        r = lib.run([k, "convert", "--model", model, "--out", hf, "--quiet"])
        assert r.returncode == 0, r.stderr
        header, data = read_st(os.path.join(hf, "model.safetensors"))

        def generate(m):
            return lib.run([k, "generate", "--model", m, "--ids", "--prompt", "1 410", "--steps", "2", "--quiet"])

        def refused(m, needle):
            r = generate(m)
            err = r.stderr.rstrip("\n")
            assert r.returncode == 2, f"exit {r.returncode}, expected 2: {r.stderr or r.stdout}"
            assert err.count("\n") == 0 and err.startswith("kvsim: error:"), f"not one line: {r.stderr!r}"
            assert needle in err, f"{needle!r} not in {err!r}"

        def unedited_loads():
            for m in (model, hf):
                r = generate(m)
                assert r.returncode == 0 and len(r.stdout.split()) == 2, r.stderr
        s.check("the unedited copies load", unedited_loads)

        def hf_copy(name, edit_config=None, edit_header=None, edit_data=None):
            out = os.path.join(d, name)
            shutil.copytree(hf, out)
            if edit_config:
                cfg = json.load(open(os.path.join(out, "config.json")))
                edit_config(cfg)
                json.dump(cfg, open(os.path.join(out, "config.json"), "w"))
            if edit_header or edit_data:
                h = json.loads(json.dumps(header))
                b = bytearray(data)
                if edit_header:
                    edit_header(h)
                if edit_data:
                    edit_data(h, b)
                write_st(os.path.join(out, "model.safetensors"), h, bytes(b))
            return out

        def llama2c_copy(name, edit):
            out = os.path.join(d, name)
            b = bytearray(open(model, "rb").read())
            edit(b)
            with open(out, "wb") as f:
                f.write(b)
            return out

        # Layer count: config.json against the tensors, exactly.
        s.check("hf: num_hidden_layers 4 over 5 layers of weights",
                lambda: refused(hf_copy("layers4", edit_config=lambda c: c.update(num_hidden_layers=4)),
                                "num_hidden_layers = 4 but the weights hold layers 0..4"))
        s.check("hf: num_hidden_layers 6 over 5 layers of weights",
                lambda: refused(hf_copy("layers6", edit_config=lambda c: c.update(num_hidden_layers=6)),
                                "missing tensor model.layers.5."))
        s.check("llama2.c: a header saying 4 layers over 5",
                lambda: refused(llama2c_copy("layers4.bin", lambda b: struct.pack_into("<i", b, 8, 4)),
                                "header implies"))

        # Non-finite weights. The embedding is [512, 64] float32 first in the llama2.c file.
        for value, label in ((float("nan"), "NaN"), (float("inf"), "Inf")):
            s.check(f"llama2.c: one {label} weight",
                    lambda value=value, label=label: refused(
                        llama2c_copy(f"{label}.bin", lambda b: struct.pack_into("<f", b, HEADER + 4 * 777, value)),
                        "tensor embedding: non-finite weight"))

            def st_nonfinite(h, b, value=value):
                begin = h["model.layers.2.self_attn.k_proj.weight"]["data_offsets"][0]
                struct.pack_into("<f", b, begin + 4 * 5, value)
            s.check(f"hf: one {label} weight in model.safetensors",
                    lambda label=label, edit=st_nonfinite: refused(hf_copy(f"st{label}", edit_data=edit),
                                                                    "tensor layers.2.wk: non-finite weight"))

        # Shapes and offsets: exact non-negative integers only.
        def set_shape(shape):
            return lambda h: h["model.embed_tokens.weight"].update(shape=shape)
        s.check("safetensors: shape [512.5, 64]",
                lambda: refused(hf_copy("half", edit_header=set_shape([512.5, 64])), "512.5"))
        s.check("safetensors: shape [-512, 64]",
                lambda: refused(hf_copy("neg", edit_header=set_shape([-512, 64])), "-512"))

        def float_offset(h):
            o = h["model.norm.weight"]["data_offsets"]
            h["model.norm.weight"]["data_offsets"] = [o[0] + 0.5, o[1]]
        s.check("safetensors: data_offsets [B + 0.5, E]",
                lambda: refused(hf_copy("offset", edit_header=float_offset), "non-negative integers"))

        # A shard index naming files outside the model directory.
        def index_outside(name, target):
            out = hf_copy(name)
            shutil.move(os.path.join(out, "model.safetensors"), target)
            return out

        def relative_escape():
            out = index_outside("shard_rel", os.path.join(d, "outside.safetensors"))
            json.dump({"weight_map": {t: "../outside.safetensors" for t in header if t != "__metadata__"}},
                      open(os.path.join(out, "model.safetensors.index.json"), "w"))
            refused(out, "outside the model directory")
        s.check("hf: a shard index naming ../outside.safetensors", relative_escape)

        def absolute_escape():
            target = os.path.join(d, "absolute.safetensors")
            out = index_outside("shard_abs", target)
            json.dump({"weight_map": {t: target for t in header if t != "__metadata__"}},
                      open(os.path.join(out, "model.safetensors.index.json"), "w"))
            refused(out, "outside the model directory")
        s.check("hf: a shard index naming an absolute path", absolute_escape)

        def index_inside_loads():
            out = hf_copy("shard_ok")
            os.rename(os.path.join(out, "model.safetensors"), os.path.join(out, "model-00001-of-00001.safetensors"))
            json.dump({"weight_map": {t: "model-00001-of-00001.safetensors" for t in header if t != "__metadata__"}},
                      open(os.path.join(out, "model.safetensors.index.json"), "w"))
            r = generate(out)
            assert r.returncode == 0, r.stderr
        s.check("hf: a shard index naming its own files loads", index_inside_loads)
    s.finish()


if __name__ == "__main__":
    main()
