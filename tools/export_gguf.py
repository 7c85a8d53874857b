"""export_gguf.py: a LLaMA checkpoint (tools/model.py) -> GGUF, through our
own writer tools/gguf.py.

    export_gguf.py CHECKPOINT.pt OUT.gguf [--name NAME] [--tokenizer models/tokenizer.model]

Metadata: the usual llama keys (general.architecture=llama, general.name,
llama.context_length, embedding_length, block_count, feed_forward_length,
rope.dimension_count, attention.head_count, head_count_kv,
attention.layer_norm_rms_epsilon, rope.freq_base, vocab_size,
general.file_type) and the SentencePiece vocabulary (add_llama_tokenizer).
Tensors: token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output,
ffn_norm, ffn_gate, ffn_up, ffn_down}, output_norm, and output only when the
head is not tied. 1-D norm weights are F32, matrices F16 unless `types`
says otherwise. attn_q/attn_k rows are permuted with gguf.permute_qk (by
n_heads / n_kv_heads) exactly as llama.cpp's converter does, so that RoPE on
adjacent pairs (GGML's convention) equals HF's rotate-half on the original.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402

LLAMA_FTYPE_MOSTLY_F16 = 1


def tensor_order(n_layers, tied):
    names = ["token_embd.weight"]
    for i in range(n_layers):
        names += [f"blk.{i}.{s}.weight" for s in
                  ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                   "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")]
    names.append("output_norm.weight")
    if not tied:
        names.append("output.weight")
    return names


def write_llama_gguf(path, tensors, cfg, tokenizer_path, name, types=None,
                     file_type=LLAMA_FTYPE_MOSTLY_F16):
    """tensors: {gguf tensor name: float32 array in HF layout (out, in),
    Q/K not yet permuted}. cfg: a model.LlamaConfig. types: {name: ggml
    type} overrides (default F32 for 1-D, F16 otherwise). Returns the
    file's size."""
    types = types or {}
    names = tensor_order(cfg.n_layers, cfg.tied)
    assert set(names) == set(tensors), f"tensor set differs: {set(names) ^ set(tensors)}"
    assert cfg.dim == cfg.n_heads * cfg.head_dim, "GGUF llama derives head_dim = dim / n_heads"
    w = gguf.GGUFWriter()
    w.add_string("general.architecture", "llama")
    w.add_string("general.name", name)
    w.add_u32("general.file_type", file_type)
    w.add_u32("llama.context_length", cfg.ctx_len)
    w.add_u32("llama.embedding_length", cfg.dim)
    w.add_u32("llama.block_count", cfg.n_layers)
    w.add_u32("llama.feed_forward_length", cfg.ffn_dim)
    w.add_u32("llama.rope.dimension_count", cfg.head_dim)
    w.add_u32("llama.attention.head_count", cfg.n_heads)
    w.add_u32("llama.attention.head_count_kv", cfg.n_kv_heads)
    w.add_f32("llama.attention.layer_norm_rms_epsilon", cfg.norm_eps)
    w.add_f32("llama.rope.freq_base", cfg.rope_base)
    w.add_u32("llama.vocab_size", cfg.vocab_size)
    n_vocab = gguf.add_llama_tokenizer(w, tokenizer_path)
    assert n_vocab == cfg.vocab_size, f"tokenizer has {n_vocab} tokens, model {cfg.vocab_size}"
    for n in names:
        a = np.asarray(tensors[n], dtype=np.float32)
        if n.endswith("attn_q.weight"):
            a = gguf.permute_qk(a, cfg.n_heads)
        elif n.endswith("attn_k.weight"):
            a = gguf.permute_qk(a, cfg.n_kv_heads)
        t = types.get(n, gguf.GGML_F32 if a.ndim == 1 else gguf.GGML_F16)
        if t == gguf.GGML_F16:
            assert np.all(np.abs(a) < 65504), f"{n} overflows float16"
        w.add_tensor(n, a, t)
    w.write(path)
    return os.path.getsize(path)


def tensors_from_state_dict(state_dict):
    """tools/model.py parameter names -> GGUF names, as float32 numpy."""
    from model import gguf_name
    return {gguf_name(k): v.detach().float().cpu().numpy() for k, v in state_dict.items()}


def export_model(model, path, tokenizer_path, name):
    return write_llama_gguf(path, tensors_from_state_dict(model.state_dict()), model.c,
                            tokenizer_path, name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--name", default="llmd-20m")
    ap.add_argument("--tokenizer", default=os.path.join(os.path.dirname(__file__), "..", "models", "tokenizer.model"))
    a = ap.parse_args()
    from model import load_checkpoint
    model, _ = load_checkpoint(a.checkpoint)
    size = export_model(model, a.out, a.tokenizer, a.name)
    print(f"wrote {a.out}: {size} bytes ({size / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
