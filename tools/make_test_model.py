"""make_test_model.py: the test fixture tests/data/tiny-random.gguf.

    make_test_model.py OUT.gguf [--seed 42]

A small random-weight LLaMA: dim 256, 2 layers, 4 heads, 2 KV heads
(head_dim 64), SwiGLU FFN 384, context 512, RoPE base 10000, RMSNorm eps
1e-5, an UNTIED output head, and the real 8000-token vocabulary from
models/tokenizer.model. Tensor types exercise every reader path: norms F32,
most matrices F16, blk.0.attn_v and blk.0.ffn_up BF16, blk.1.attn_q and
blk.1.ffn_down Q8_0. Weights are Normal(0, 0.05) (norm weights 1 + N(0,
0.1)) so that logits are far from flat. Deterministic: the same seed gives
the same bytes.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402
from export_gguf import tensor_order, write_llama_gguf  # noqa: E402
from llama_config import LlamaConfig  # noqa: E402

TINY_CONFIG = LlamaConfig(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=64, ffn_dim=384,
                          vocab_size=8000, ctx_len=512, rope_base=10000.0, norm_eps=1e-5, tied=False)
WEIGHT_STD = 0.05
NORM_STD = 0.1
TYPES = {
    "blk.0.attn_v.weight": gguf.GGML_BF16,
    "blk.0.ffn_up.weight": gguf.GGML_BF16,
    "blk.1.attn_q.weight": gguf.GGML_Q8_0,
    "blk.1.ffn_down.weight": gguf.GGML_Q8_0,
}


def tensor_shapes(c):
    """GGUF tensor name -> shape in HF layout (out features, in features)."""
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    per_layer = {"attn_norm": (c.dim,), "attn_q": (q, c.dim), "attn_k": (kv, c.dim),
                 "attn_v": (kv, c.dim), "attn_output": (c.dim, q), "ffn_norm": (c.dim,),
                 "ffn_gate": (c.ffn_dim, c.dim), "ffn_up": (c.ffn_dim, c.dim),
                 "ffn_down": (c.dim, c.ffn_dim)}
    shapes = {}
    for n in tensor_order(c.n_layers, c.tied):
        if n.startswith("blk."):
            shapes[n] = per_layer[n.split(".")[2]]
        elif n == "output_norm.weight":
            shapes[n] = (c.dim,)
        else:  # token_embd, output
            shapes[n] = (c.vocab_size, c.dim)
    return shapes


def random_tensors(c, seed):
    rng = np.random.default_rng(seed)
    out = {}
    for n, shape in tensor_shapes(c).items():
        if len(shape) == 1:
            out[n] = (1.0 + NORM_STD * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[n] = (WEIGHT_STD * rng.standard_normal(shape)).astype(np.float32)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--tokenizer", default=os.path.join(os.path.dirname(__file__), "..", "models", "tokenizer.model"))
    a = ap.parse_args()
    size = write_llama_gguf(a.out, random_tensors(TINY_CONFIG, a.seed), TINY_CONFIG, a.tokenizer,
                            "tiny-random", types=TYPES)
    print(f"wrote {a.out}: {size} bytes")


if __name__ == "__main__":
    main()
