"""stories260K (../shared/models/stories260K) as a small PyTorch Llama module, for tools/record_hf.py's tests.

Written from the checkpoint's documented layout (../shared/models/README.md), not from kvsim's native
loader: a llama2.c header of 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len),
then fp32 token embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final; RMSNorm eps 1e-5, RoPE
theta 10000 on interleaved pairs (x[2i], x[2i+1]), SwiGLU FFN, classifier tied to the embedding.

Each attention module calls `self.attention_function(self, q, k, v, mask, scaling=...)`, the hook point
tools/record_hf.py documents for your own modules. Factories for `--model THIS_FILE:NAME`: `build` (the
model), `build_unhookable` (attention computed inline: nothing to hook), `build_softcapped` (its attention
function is told to soft-cap the logits, which a trace cannot describe), `build_scaled` (logits scaled by 1/4
instead of 1/sqrt(D), as Gemma's query_pre_attn_scalar does), `build_shared_kv` (layers 1.. attend over
layer 0's keys and values: cross-layer KV sharing).
"""
import os
import struct

import numpy as np
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "..", "shared", "models", "stories260K", "stories260K.bin")


def eager_attention(module, q, k, v, mask, scaling, softcap=None):
    """q [B, H, T, D], k/v [B, Hkv, T, D] -> (out [B, T, H, D], weights [B, H, T, T])."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    z = q @ k.transpose(2, 3) * scaling
    if softcap is not None:
        z = torch.tanh(z / softcap) * softcap
    p = torch.softmax(z + mask, dim=-1)
    return (p @ v).transpose(1, 2), p


def rope_interleaved(x, theta):
    """x [B, heads, T, D]: rotate pairs (x[2i], x[2i+1]) at positions 0..T-1 by pos * theta^(-2i/D)."""
    T, D = x.shape[2], x.shape[3]
    inv = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    c, s = torch.cos(ang).float(), torch.sin(ang).float()
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)


class RMSNorm(nn.Module):
    def __init__(self, w, eps=1e-5):
        super().__init__()
        self.weight, self.eps = nn.Parameter(w, requires_grad=False), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def linear(w):
    m = nn.Linear(w.shape[1], w.shape[0], bias=False)
    m.weight = nn.Parameter(w, requires_grad=False)
    return m


class LlamaAttention(nn.Module):
    def __init__(self, layer_idx, wq, wk, wv, wo, H, Hkv, theta):
        super().__init__()
        self.layer_idx, self.H, self.Hkv, self.theta = layer_idx, H, Hkv, theta
        self.D = wq.shape[0] // H
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = linear(wq), linear(wk), linear(wv), linear(wo)
        self.attention_function = eager_attention

    def forward(self, x, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.D).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.Hkv, self.D).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.Hkv, self.D).transpose(1, 2)
        q, k = rope_interleaved(q, self.theta), rope_interleaved(k, self.theta)
        o, _ = self.attend(q, k, v, mask)
        return self.o_proj(o.reshape(B, T, -1))

    def attend(self, q, k, v, mask):
        return self.attention_function(self, q, k, v, mask, scaling=self.D ** -0.5)


class Block(nn.Module):
    def __init__(self, attn, rms_att, rms_ffn, w1, w2, w3):
        super().__init__()
        self.self_attn, self.input_norm, self.post_norm = attn, RMSNorm(rms_att), RMSNorm(rms_ffn)
        self.w1, self.w2, self.w3 = linear(w1), linear(w2), linear(w3)

    def forward(self, x, mask):
        x = x + self.self_attn(self.input_norm(x), mask)
        h = self.post_norm(x)
        return x + self.w2(nn.functional.silu(self.w1(h)) * self.w3(h))


class Llama(nn.Module):
    def __init__(self, path=MODEL, attention=LlamaAttention):
        super().__init__()
        with open(path, "rb") as f:
            dim, hidden, L, H, Hkv, vocab, seq_len = struct.unpack("<7i", f.read(28))
            data = np.frombuffer(f.read(), dtype="<f4")
        kv_dim = dim * Hkv // H
        off = 0

        def take(*shape):
            nonlocal off
            n = int(np.prod(shape))
            t = torch.from_numpy(data[off:off + n].copy()).reshape(shape)
            off += n
            return t

        emb = take(abs(vocab), dim)
        rms_att, wq, wk, wv, wo = take(L, dim), take(L, dim, dim), take(L, kv_dim, dim), take(L, kv_dim, dim), \
            take(L, dim, dim)
        rms_ffn, w1, w2, w3 = take(L, dim), take(L, hidden, dim), take(L, dim, hidden), take(L, hidden, dim)
        rms_final = take(dim)
        self.embed = nn.Parameter(emb, requires_grad=False)
        self.layers = nn.ModuleList(
            Block(attention(l, wq[l], wk[l], wv[l], wo[l], H, Hkv, 10000.0), rms_att[l], rms_ffn[l], w1[l], w2[l],
                  w3[l]) for l in range(L))
        self.norm = RMSNorm(rms_final)
        self.kvsim_spec = {"model": "stories260K (PyTorch, tests/py/stories260k_torch.py)", "architecture": "llama",
                           "n_layers": L, "n_heads": H, "n_kv_heads": Hkv, "head_dim": dim // H,
                           "vocab_size": abs(vocab), "rope_theta": 10000.0, "rope_style": "interleaved"}

    def forward(self, ids):
        T = ids.shape[1]
        mask = torch.full((T, T), float("-inf")).triu(1)
        x = self.embed[ids]
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x) @ self.embed.T  # [B, T, vocab]


class InlineAttention(LlamaAttention):
    """Computes its attention inline, with no attention function for a recorder to hook."""

    def __init__(self, *a):
        super().__init__(*a)
        del self.attention_function

    def forward(self, x, mask):
        B, T, _ = x.shape
        q = rope_interleaved(self.q_proj(x).view(B, T, self.H, self.D).transpose(1, 2), self.theta)
        k = rope_interleaved(self.k_proj(x).view(B, T, self.Hkv, self.D).transpose(1, 2), self.theta)
        v = self.v_proj(x).view(B, T, self.Hkv, self.D).transpose(1, 2)
        o, _ = eager_attention(self, q, k, v, mask, self.D ** -0.5)
        return self.o_proj(o.reshape(B, T, -1))


class SoftcappedAttention(LlamaAttention):
    def attend(self, q, k, v, mask):
        return self.attention_function(self, q, k, v, mask, scaling=self.D ** -0.5, softcap=30.0)


class ScaledAttention(LlamaAttention):
    def attend(self, q, k, v, mask):
        return self.attention_function(self, q, k, v, mask, scaling=0.25)


class SharedKVAttention(LlamaAttention):
    shared = {}  # layer 0's (k, v), attended by every later layer

    def attend(self, q, k, v, mask):
        if self.layer_idx == 0:
            SharedKVAttention.shared["kv"] = (k, v)
        return self.attention_function(self, q, *SharedKVAttention.shared["kv"], mask, scaling=self.D ** -0.5)


def build():
    return Llama()


def build_unhookable():
    return Llama(attention=InlineAttention)


def build_softcapped():
    return Llama(attention=SoftcappedAttention)


def build_scaled():
    return Llama(attention=ScaledAttention)


def build_shared_kv():
    return Llama(attention=SharedKVAttention)
