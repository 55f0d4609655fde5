#!/usr/bin/env python3
"""tools/record_hf.py on real transformers modules: small randomly initialised Llama, Qwen2 (and Qwen3 with
its q/k norm, where the installed transformers has it) built from a config, recorded through transformers'
AttentionInterface. Independent check: the trace's q and k give softmax(q k^T / sqrt(D)) (causal, GQA) equal
to the attention weights the module itself returns (`output_attentions=True`, eager), and its o equals those
weights times v. Also: a sliding window shorter than the sequence and Gemma 2's soft-capped logits are
refused with one line and leave no file. Skipped where torch or transformers is not importable. Run:
    /usr/bin/python3 tests/py/test_record_hf_transformers.py --kvsim build/kvsim
"""
import os
import sys

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import kvsim_testlib as lib  # noqa: E402

T = 37  # off powers of two


def small(config_cls, **extra):
    return config_cls(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      attn_implementation="eager", **extra)


def main():
    args = lib.parse_args()
    try:
        import torch
        import transformers
    except ImportError as e:
        lib.skip(f"{e.name} is not importable")
    import record_hf

    kvsim = os.path.abspath(args.kvsim)
    s = lib.Suite()
    rng = np.random.default_rng(18)
    ids = [int(t) for t in rng.integers(0, 101, T)]
    families = [("llama", "LlamaForCausalLM", "LlamaConfig", {}),
                ("qwen2", "Qwen2ForCausalLM", "Qwen2Config", {}),
                ("qwen3", "Qwen3ForCausalLM", "Qwen3Config", {"head_dim": 16})]
    with lib.tempdir() as d:
        def logits_reproduce_attention(model_cls, config_cls, extra, name):
            torch.manual_seed(0)
            model = getattr(transformers, model_cls)(small(getattr(transformers, config_cls), **extra)).eval()
            spec = record_hf.describe_hf(model, name)
            out = os.path.join(d, name + ".h5")
            record_hf.record(model, spec, ids, out, pre=True, with_o=True)
            with torch.no_grad():
                att = model(torch.tensor([ids]), output_attentions=True).attentions  # L x [1, H, T, T]
            worst = 0.0
            with h5py.File(out, "r") as f:
                assert f.attrs["rope_style"] == "half" and f.attrs["architecture"] == "llama"
                D = int(f.attrs["head_dim"])
                for l in range(int(f.attrs["n_layers"])):
                    g = f[f"sequences/0000/layers/{l}"]
                    q, k, v, o = (g[x][()].astype(np.float64) for x in ("q", "k", "v", "o"))
                    G = q.shape[0] // k.shape[0]
                    for h in range(q.shape[0]):
                        z = q[h] @ k[h // G].T / np.sqrt(D) + np.triu(np.full((T, T), -np.inf), 1)
                        p = np.exp(z - z.max(axis=1, keepdims=True))
                        p /= p.sum(axis=1, keepdims=True)
                        want = att[l][0, h].double().numpy()
                        worst = max(worst, np.abs(p - want).max(), np.abs(p @ v[h // G] - o[h]).max())
            print(f"  {name}: worst |trace attention - module attention| {worst:.2e}")
            assert worst <= 1e-5, worst
            r = lib.run([kvsim, "info", out, "--check"])
            assert r.returncode == 0, r.stderr

        def refused(model, pattern):
            out = os.path.join(d, "refused.h5")
            try:
                record_hf.record(model, record_hf.describe_hf(model, "m"), ids, out)
            except record_hf.RecordError as e:
                assert pattern in str(e) and "\n" not in str(e), str(e)
            else:
                raise AssertionError("recorded what it should refuse")
            assert not os.path.exists(out) and not os.path.exists(out + ".partial")

        for name, model_cls, config_cls, extra in families:
            if hasattr(transformers, model_cls):
                s.check(f"{model_cls}: the trace's q.k logits reproduce the module's attention weights",
                        lambda a=(model_cls, config_cls, extra, name): logits_reproduce_attention(*a))
        if hasattr(transformers, "MistralForCausalLM"):
            s.check("a sliding window shorter than the sequence is refused",
                    lambda: refused(transformers.MistralForCausalLM(small(transformers.MistralConfig,
                                                                          sliding_window=16)).eval(),
                                    "sliding-window attention (window 16)"))
        if hasattr(transformers, "Gemma2ForCausalLM"):
            s.check("Gemma 2's soft-capped attention logits are refused",
                    lambda: refused(transformers.Gemma2ForCausalLM(small(transformers.Gemma2Config,
                                                                         head_dim=16)).eval(),
                                    "soft-capped attention logits"))
    s.finish()


if __name__ == "__main__":
    main()
