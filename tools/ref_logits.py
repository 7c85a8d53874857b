"""ref_logits.py: reference logits of a GGUF model from Hugging Face
transformers, independent of llmd's C code and of tools/model.py.

    ref_logits.py MODEL.gguf OUT.logits.bin [--tokenizer models/tokenizer.model]
                  [--compare-checkpoint CKPT.pt]

Reads the GGUF with tools/gguf.py (tensors dequantized from F32/F16/BF16/
Q8_0 to float32 exactly as stored), un-permutes attn_q/attn_k back to HF's
rotate-half order, builds transformers.LlamaForCausalLM in float32 from the
file's llama.* keys (tie_word_embeddings as in the file: tied when there is
no output.weight) with exactly those weights, runs four fixed prompts and
writes the logits at every position.

Prompts: BOS followed by the ids of PROMPT_TEXTS[i] (SentencePiece encode,
which adds the leading-space marker), cut to PROMPT_LENGTHS[i] tokens in all.

Output file (little-endian):
    char[8]  magic "LLMDLOGT"
    u32      version (1)
    u32      n_prompts
    u32      n_vocab
    u32      reserved (0)
    then per prompt:
        u32  n_tokens
        i32  ids[n_tokens]
        f32  logits[n_tokens][n_vocab]   (row t: the logits after ids[0..t])

--compare-checkpoint: also runs tools/model.py on the checkpoint the GGUF
was exported from (its matrices rounded to float16 as the export does) and
fails unless its logits match HF's (max |diff| <= COMPARE_TOLERANCE): a
check of the export (names, Q/K permutation) and of model.py against HF.
"""

import argparse
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402

MAGIC = b"LLMDLOGT"
VERSION = 1
PROMPT_LENGTHS = (5, 17, 33, 64)
PROMPT_TEXTS = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    "The Congress shall have power to lay and collect taxes, duties, imposts and excises, to pay the debts and provide "
    "for the common defence and general welfare of the United States.",
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was "
    "upon the face of the deep. And the Spirit of God moved upon the face of the waters.",
    "Call me Ishmael. Some years ago--never mind how long precisely--having little or no money in my purse, and nothing "
    "particular to interest me on shore, I thought I would sail about a little and see the watery part of the world. "
    "It is a way I have of driving off the spleen and regulating the circulation. Whenever I find myself growing grim "
    "about the mouth; whenever it is a damp, drizzly November in my soul, I account it high time to get to sea.",
)
COMPARE_TOLERANCE = 2e-3


def prompts(tokenizer_path):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    out = []
    for n, text in zip(PROMPT_LENGTHS, PROMPT_TEXTS):
        ids = [sp.bos_id()] + sp.encode(text)
        assert len(ids) >= n, f"prompt text too short for {n} tokens"
        out.append(ids[:n])
    return out


def gguf_config(meta, tensors):
    """The model's hyperparameters from the llama.* keys."""
    dim = meta["llama.embedding_length"]
    n_heads = meta["llama.attention.head_count"]
    return dict(
        dim=dim, n_layers=meta["llama.block_count"], n_heads=n_heads,
        n_kv_heads=meta.get("llama.attention.head_count_kv", n_heads),
        head_dim=dim // n_heads, ffn_dim=meta["llama.feed_forward_length"],
        vocab_size=tensors["token_embd.weight"][0].shape[0],
        ctx_len=meta["llama.context_length"],
        rope_base=float(meta.get("llama.rope.freq_base", 10000.0)),
        norm_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
        tied="output.weight" not in tensors)


def hf_state_dict(tensors, c):
    """GGUF tensors -> LlamaForCausalLM state dict (float32 numpy)."""
    t = {k: v[0] for k, v in tensors.items()}
    sd = {"model.embed_tokens.weight": t["token_embd.weight"],
          "model.norm.weight": t["output_norm.weight"],
          "lm_head.weight": t["token_embd.weight"] if c["tied"] else t["output.weight"]}
    for i in range(c["n_layers"]):
        b, h = f"blk.{i}.", f"model.layers.{i}."
        sd[h + "self_attn.q_proj.weight"] = gguf.unpermute_qk(t[b + "attn_q.weight"], c["n_heads"])
        sd[h + "self_attn.k_proj.weight"] = gguf.unpermute_qk(t[b + "attn_k.weight"], c["n_kv_heads"])
        sd[h + "self_attn.v_proj.weight"] = t[b + "attn_v.weight"]
        sd[h + "self_attn.o_proj.weight"] = t[b + "attn_output.weight"]
        sd[h + "mlp.gate_proj.weight"] = t[b + "ffn_gate.weight"]
        sd[h + "mlp.up_proj.weight"] = t[b + "ffn_up.weight"]
        sd[h + "mlp.down_proj.weight"] = t[b + "ffn_down.weight"]
        sd[h + "input_layernorm.weight"] = t[b + "attn_norm.weight"]
        sd[h + "post_attention_layernorm.weight"] = t[b + "ffn_norm.weight"]
    return sd


def build_hf_model(c, sd):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    kw = dict(vocab_size=c["vocab_size"], hidden_size=c["dim"], intermediate_size=c["ffn_dim"],
              num_hidden_layers=c["n_layers"], num_attention_heads=c["n_heads"],
              num_key_value_heads=c["n_kv_heads"], head_dim=c["head_dim"],
              max_position_embeddings=c["ctx_len"], rms_norm_eps=c["norm_eps"],
              hidden_act="silu", attention_bias=False, mlp_bias=False,
              tie_word_embeddings=c["tied"], bos_token_id=1, eos_token_id=2)
    try:  # transformers 5: rope_parameters; 4.x keeps it as an unused attribute
        config = LlamaConfig(**kw, rope_parameters={"rope_type": "default", "rope_theta": c["rope_base"]})
    except TypeError:
        config = LlamaConfig(**kw)
    if not isinstance(getattr(config, "rope_parameters", None), dict) or "rope_theta" not in config.rope_parameters:
        config.rope_theta = c["rope_base"]  # transformers 4.x
    try:
        config._attn_implementation = "eager"
    except Exception:  # noqa: BLE001 - optional: the default (sdpa) computes the same attention
        pass
    model = LlamaForCausalLM(config).float().eval()
    load = dict(sd)
    if c["tied"]:
        load.pop("lm_head.weight")  # tied to model.embed_tokens.weight
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in load.items()}, strict=False)
    assert not unexpected, f"unexpected keys {unexpected}"
    assert set(missing) <= ({"lm_head.weight"} if c["tied"] else set()), f"missing keys {missing}"
    # the weights in use are the file's, RoPE is the file's
    assert np.array_equal(model.lm_head.weight.detach().numpy(), sd["lm_head.weight"])
    want = 1.0 / c["rope_base"] ** (np.arange(0, c["head_dim"], 2) / c["head_dim"])
    inv_freqs = [b.detach().double().numpy() for n, b in model.named_buffers() if n.endswith("inv_freq")]
    assert inv_freqs and all(np.allclose(f, want, rtol=1e-6) for f in inv_freqs), "RoPE base not applied"
    return model


def run_hf(model, ids_list):
    import torch
    out = []
    with torch.no_grad():
        for ids in ids_list:
            logits = model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0]
            out.append(logits.float().numpy())
    return out


def write_logits(path, ids_list, logits_list):
    n_vocab = logits_list[0].shape[1]
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<IIII", VERSION, len(ids_list), n_vocab, 0))
        for ids, lg in zip(ids_list, logits_list):
            assert lg.shape == (len(ids), n_vocab)
            f.write(struct.pack("<I", len(ids)))
            f.write(np.asarray(ids, dtype="<i4").tobytes())
            f.write(np.ascontiguousarray(lg, dtype="<f4").tobytes())


def read_logits(path):
    """Returns [(ids, logits)] from a file written by write_logits."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == MAGIC
    version, n_prompts, n_vocab, _ = struct.unpack_from("<IIII", data, 8)
    assert version == VERSION
    pos, out = 24, []
    for _ in range(n_prompts):
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        ids = np.frombuffer(data, dtype="<i4", count=n, offset=pos)
        pos += 4 * n
        lg = np.frombuffer(data, dtype="<f4", count=n * n_vocab, offset=pos).reshape(n, n_vocab)
        pos += 4 * n * n_vocab
        out.append((ids, lg))
    assert pos == len(data)
    return out


def compare_checkpoint(ckpt_path, ids_list, hf_logits):
    """max |logits(model.py, f16-rounded checkpoint) - logits(HF, GGUF)|."""
    import torch
    from model import load_checkpoint
    model, _ = load_checkpoint(ckpt_path)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(p.half().float())
        worst = 0.0
        for ids, ref in zip(ids_list, hf_logits):
            ours = model.eval()(torch.tensor([ids])).float().numpy()[0]
            worst = max(worst, float(np.abs(ours - ref).max()))
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--tokenizer", default=os.path.join(os.path.dirname(__file__), "..", "models", "tokenizer.model"))
    ap.add_argument("--compare-checkpoint")
    a = ap.parse_args()
    import torch
    import transformers
    torch.manual_seed(0)
    meta, tensors = gguf.read_tensors(a.gguf)
    c = gguf_config(meta, tensors)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}; model {c}")
    model = build_hf_model(c, hf_state_dict(tensors, c))
    ids_list = prompts(a.tokenizer)
    logits = run_hf(model, ids_list)
    write_logits(a.out, ids_list, logits)
    back = read_logits(a.out)
    assert all(np.array_equal(b[1], lg) for b, lg in zip(back, logits))
    for ids, lg in zip(ids_list, logits):
        print(f"prompt of {len(ids)} tokens: logits std {lg.std():.3f}, argmax at last {int(lg[-1].argmax())}")
    print(f"wrote {a.out}")
    if a.compare_checkpoint:
        worst = compare_checkpoint(a.compare_checkpoint, ids_list, logits)
        print(f"model.py vs HF on the exported GGUF: max |diff| = {worst:.3e} (tolerance {COMPARE_TOLERANCE})")
        if not worst <= COMPARE_TOLERANCE:
            sys.exit("FAIL: model.py and HF disagree")


if __name__ == "__main__":
    main()
