"""model.py: a plain LLaMA in PyTorch (no transformers), the one llmd ships.

Pre-norm decoder blocks: RMSNorm -> attention (grouped-query, RoPE in the
Hugging Face rotate-half convention) -> residual; RMSNorm -> SwiGLU FFN ->
residual; final RMSNorm; output head (tied to the token embeddings or not).
No biases. Parameter names follow the GGUF tensor names one to one (see
GGUF_NAMES) so that the export is a renaming, plus the Q/K row permutation
GGUF readers expect.

Works with torch 1.13 (CPU tests here) and 2.x (GPU): scaled_dot_product_
attention is used where it exists, else a plain causal softmax attention.
"""

import dataclasses
import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llama_config import LlamaConfig, config_from_dict  # noqa: F401 (re-exported)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 as Hugging Face does."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(head_dim, base, n_positions, device):
    """cos/sin tables (n_positions, head_dim) in the rotate-half layout:
    frequency i drives dims i and i + head_dim/2."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    t = torch.arange(n_positions, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    """x: (batch, heads, seq, head_dim); cos/sin: (seq, head_dim)."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


def causal_attention(q, k, v):
    """softmax(q k^T / sqrt(d) + causal mask) v; (batch, heads, seq, dim)."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    t = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(-1).to(v.dtype) @ v


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.attn_q = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=False)
        self.attn_k = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.attn_v = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.attn_output = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        c = self.c
        q = self.attn_q(x).view(b, t, c.n_heads, c.head_dim).transpose(1, 2)
        k = self.attn_k(x).view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)
        v = self.attn_v(x).view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # KV head j serves query heads j*rep .. (j+1)*rep-1 (HF's repeat_kv)
        rep = c.n_heads // c.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = causal_attention(q, k, v)
        return self.attn_output(y.transpose(1, 2).reshape(b, t, c.n_heads * c.head_dim))


class FeedForward(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ffn_gate = nn.Linear(c.dim, c.ffn_dim, bias=False)
        self.ffn_up = nn.Linear(c.dim, c.ffn_dim, bias=False)
        self.ffn_down = nn.Linear(c.ffn_dim, c.dim, bias=False)

    def forward(self, x):
        return self.ffn_down(F.silu(self.ffn_gate(x)) * self.ffn_up(x))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attn_norm = RMSNorm(c.dim, c.norm_eps)
        self.attn = Attention(c)
        self.ffn_norm = RMSNorm(c.dim, c.norm_eps)
        self.ffn = FeedForward(c)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, cos, sin):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.token_embd = nn.Embedding(c.vocab_size, c.dim)
        self.blk = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.output_norm = RMSNorm(c.dim, c.norm_eps)
        self.output = None if c.tied else nn.Linear(c.dim, c.vocab_size, bias=False)
        self.drop = nn.Dropout(c.dropout)
        cos, sin = rope_cos_sin(c.head_dim, c.rope_base, c.ctx_len, "cpu")
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def init_weights(self, generator=None):
        """Normal(0, 0.02); the projections into the residual stream scaled
        by 1/sqrt(2 n_layers) (GPT-2's rule); norms at 1."""
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            else:
                s = std / math.sqrt(2 * self.c.n_layers) if name.endswith(("attn_output.weight", "ffn_down.weight")) else std
                with torch.no_grad():
                    p.normal_(0.0, s, generator=generator)

    def head_weight(self):
        return self.token_embd.weight if self.output is None else self.output.weight

    def hidden(self, idx):
        """Token ids (batch, seq <= ctx_len) -> final-norm hidden states
        (batch, seq, dim)."""
        t = idx.shape[1]
        assert t <= self.c.ctx_len, f"{t} tokens exceed the context of {self.c.ctx_len}"
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.drop(self.token_embd(idx))
        for blk in self.blk:
            x = blk(x, cos, sin)
        return self.output_norm(x)

    def logits(self, h):
        return F.linear(h, self.head_weight())

    def forward(self, idx):
        return self.logits(self.hidden(idx))


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


# GGUF tensor name for each parameter name (blk.N.* maps by the same suffix).
GGUF_NAMES = {
    "token_embd.weight": "token_embd.weight",
    "output_norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
    "attn_norm.weight": "attn_norm.weight",
    "attn.attn_q.weight": "attn_q.weight",
    "attn.attn_k.weight": "attn_k.weight",
    "attn.attn_v.weight": "attn_v.weight",
    "attn.attn_output.weight": "attn_output.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn.ffn_gate.weight": "ffn_gate.weight",
    "ffn.ffn_up.weight": "ffn_up.weight",
    "ffn.ffn_down.weight": "ffn_down.weight",
}


def gguf_name(param_name):
    if param_name.startswith("blk."):
        _, n, rest = param_name.split(".", 2)
        return f"blk.{n}.{GGUF_NAMES[rest]}"
    return GGUF_NAMES[param_name]


def save_checkpoint(path, model, extra=None):
    """fp32 state dict + config (+ anything in extra, e.g. the summary)."""
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": dataclasses.asdict(model.c), "model": sd, **(extra or {})}, path)


def load_checkpoint(path, device="cpu"):
    kw = {"weights_only": False} if "weights_only" in inspect.signature(torch.load).parameters else {}
    ck = torch.load(path, map_location=device, **kw)
    model = Llama(config_from_dict(ck["config"]))
    model.load_state_dict(ck["model"])
    return model.to(device), ck
