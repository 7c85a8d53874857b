"""test_tools.py: checks of the Python tools that run on the CPU here.

    /usr/bin/python3 tools/test_tools.py [-k SUBSTRING]
    python3 tools/test_tools.py --check-logits MODEL.gguf MODEL.logits.bin

Plain asserts; needs numpy, sentencepiece and torch (Debian's python3-torch
1.13 will do). Ends with "N passed, N failed". The tests that need the
built corpus (corpus/tokens/) are skipped when it is absent.
"""

import math
import os
import random
import re
import subprocess
import sys
import tempfile
import traceback

import numpy as np

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)
import gguf  # noqa: E402
import passkey  # noqa: E402

TOKENIZER = os.path.join(ROOT, "models", "tokenizer.model")
HELDOUT = os.path.join(ROOT, "models", "heldout.txt")
TOKENS = os.path.join(ROOT, "corpus", "tokens")

# Named thresholds.
F32_FORWARD_TOL = 2e-4      # numpy float64 forward vs torch float32 forward, max |logit diff|
HF_VS_NUMPY_TOL = 1e-3      # the same for --check-logits on a trained model (larger logits)
BF16_REL_ERR = 2.0 ** -8    # round-to-nearest bfloat16: relative error bound
Q8_0_SCALE_ERR = 1 / 254 + 1 / 2048  # |x - dequant| <= amax * this, per block of 32


class Skip(Exception):
    pass


def sp_model():
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=TOKENIZER)


# ============================================ numpy reference forward passes

def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope_ggml(x, base):
    """GGML's LLaMA RoPE: dims (2i, 2i+1) rotate by pos * base^(-2i/d).
    x: (seq, heads, d)."""
    t, _, d = x.shape
    theta = np.arange(t)[:, None] * base ** (-np.arange(0, d, 2) / d)[None, :]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def rope_hf(x, base):
    """HF's rotate-half RoPE: dims (i, i + d/2) rotate by pos * base^(-2i/d)."""
    t, _, d = x.shape
    theta = np.arange(t)[:, None] * base ** (-np.arange(0, d, 2) / d)[None, :]
    cos = np.concatenate([np.cos(theta)] * 2, -1)[:, None, :]
    sin = np.concatenate([np.sin(theta)] * 2, -1)[:, None, :]
    rot = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], -1)
    return x * cos + rot * sin


def numpy_forward(w, c, ids, rope):
    """A float64 LLaMA forward. w: {'embd', 'out', 'norm', 'layers': [dict
    q k v o gate up down attn_norm ffn_norm]} in (out, in) layout."""
    x = w["embd"][ids].astype(np.float64)
    t, hd = len(ids), c["head_dim"]
    rep = c["n_heads"] // c["n_kv_heads"]
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for L in w["layers"]:
        h = rms_norm(x, L["attn_norm"], c["norm_eps"])
        q = rope((h @ L["q"].T).reshape(t, c["n_heads"], hd), c["rope_base"])
        k = rope((h @ L["k"].T).reshape(t, c["n_kv_heads"], hd), c["rope_base"])
        v = (h @ L["v"].T).reshape(t, c["n_kv_heads"], hd)
        att = np.empty((t, c["n_heads"], hd))
        for head in range(c["n_heads"]):
            s = q[:, head] @ k[:, head // rep].T / math.sqrt(hd) + mask
            p = np.exp(s - s.max(-1, keepdims=True))
            att[:, head] = (p / p.sum(-1, keepdims=True)) @ v[:, head // rep]
        x = x + att.reshape(t, -1) @ L["o"].T
        h = rms_norm(x, L["ffn_norm"], c["norm_eps"])
        g = h @ L["gate"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ L["up"].T)) @ L["down"].T
    return rms_norm(x, w["norm"], c["norm_eps"]) @ w["out"].T


def weights_from_gguf(tensors, c):
    """As the C engine reads them: permuted Q/K, used with rope_ggml."""
    t = {k: v[0].astype(np.float64) for k, v in tensors.items()}
    layers = []
    for i in range(c["n_layers"]):
        b = f"blk.{i}."
        layers.append({k: t[b + n + ".weight"] for k, n in (
            ("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("o", "attn_output"), ("gate", "ffn_gate"),
            ("up", "ffn_up"), ("down", "ffn_down"), ("attn_norm", "attn_norm"), ("ffn_norm", "ffn_norm"))})
    out = t["token_embd.weight"] if c["tied"] else t["output.weight"]
    return {"embd": t["token_embd.weight"], "out": out, "norm": t["output_norm.weight"], "layers": layers}


def weights_from_hf(sd, c):
    """As ref_logits.py hands them to transformers, used with rope_hf."""
    t = {k: v.astype(np.float64) for k, v in sd.items()}
    layers = []
    for i in range(c["n_layers"]):
        h = f"model.layers.{i}."
        layers.append({k: t[h + n + ".weight"] for k, n in (
            ("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
            ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
            ("down", "mlp.down_proj"), ("attn_norm", "input_layernorm"),
            ("ffn_norm", "post_attention_layernorm"))})
    return {"embd": t["model.embed_tokens.weight"], "out": t["lm_head.weight"], "norm": t["model.norm.weight"],
            "layers": layers}


def small_torch_model(tied, seed=0):
    import torch
    from model import Llama, LlamaConfig
    c = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96,
                    vocab_size=8000, ctx_len=128, tied=tied)
    m = Llama(c)
    g = torch.Generator().manual_seed(seed)
    m.init_weights(g)
    with torch.no_grad():  # norms away from 1 and matrices larger, to make every weight count
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.mul_(5.0)
    return m.eval()


def f16_rounded_logits(model, ids):
    import torch
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(p.half().float())
        return model(torch.tensor([ids])).double().numpy()[0]


# ================================================================== tests

def test_permute_roundtrip():
    rng = np.random.default_rng(0)
    for n_head, rows, cols in ((1, 8, 3), (2, 16, 5), (4, 64, 7), (8, 512, 2), (2, 128, 512)):
        w = rng.standard_normal((rows, cols)).astype(np.float32)
        p = gguf.permute_qk(w, n_head)
        assert not np.array_equal(p, w)
        assert np.array_equal(gguf.unpermute_qk(p, n_head), w)
        assert np.array_equal(gguf.permute_qk(gguf.unpermute_qk(w, n_head), n_head), w)


def test_permute_is_llama_cpp_interleave():
    """Within each head: row 2i of the result is row i, row 2i+1 is row i + d/2."""
    n_head, d, cols = 4, 16, 3
    w = np.arange(n_head * d * cols, dtype=np.float32).reshape(n_head * d, cols)
    p = gguf.permute_qk(w, n_head)
    for h in range(n_head):
        for i in range(d // 2):
            assert np.array_equal(p[h * d + 2 * i], w[h * d + i])
            assert np.array_equal(p[h * d + 2 * i + 1], w[h * d + i + d // 2])


def test_rope_conventions_agree_through_permute():
    """HF rotate-half on W x == unpermute of (GGML adjacent pairs on permute(W) x)."""
    rng = np.random.default_rng(1)
    n_head, d, dim, t = 4, 16, 32, 9
    w = rng.standard_normal((n_head * d, dim))
    x = rng.standard_normal((t, dim))
    hf = rope_hf((x @ w.T).reshape(t, n_head, d), 10000.0).reshape(t, -1)
    gg = rope_ggml((x @ gguf.permute_qk(w, n_head).T).reshape(t, n_head, d), 10000.0).reshape(t, -1)
    assert np.allclose(gguf.unpermute_qk(gg.T, n_head).T, hf, atol=1e-12)


def test_gguf_roundtrip_all_types():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((6, 64)).astype(np.float32)
    a[2] *= 1000.0
    a[3] = 0.0  # an all-zero Q8_0 block
    w = gguf.GGUFWriter()
    w.add_string("general.name", "roundtrip")
    w.add_u32("x.u32", 7)
    w.add_f32("x.f32", 0.5)
    w.add_bool("x.bool", True)
    w.add_array("x.strings", gguf.STRING, ["a", "\u2581b", ""])
    w.add_array("x.ints", gguf.INT32, [1, -2, 3])
    for name, t in (("f32", gguf.GGML_F32), ("f16", gguf.GGML_F16), ("bf16", gguf.GGML_BF16), ("q8", gguf.GGML_Q8_0)):
        w.add_tensor(name, a, t)
    w.add_tensor("vec", a[0], gguf.GGML_F32)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.gguf")
        w.write(path)
        meta, t = gguf.read_tensors(path)
        _, infos = gguf.read_header(path)
    assert meta["general.name"] == "roundtrip" and meta["x.u32"] == 7 and meta["x.f32"] == 0.5
    assert meta["x.bool"] is True and meta["x.strings"] == ["a", "\u2581b", ""] and meta["x.ints"] == [1, -2, 3]
    assert all(off % gguf.ALIGNMENT == 0 for _, _, _, off in infos)
    assert infos[0][1] == [64, 6], "GGUF dims are fastest-first"
    assert t["f32"][1] == gguf.GGML_F32 and np.array_equal(t["f32"][0], a)
    assert np.array_equal(t["f16"][0], a.astype(np.float16).astype(np.float32))
    assert np.all(np.abs(t["bf16"][0] - a) <= np.abs(a) * BF16_REL_ERR)
    bf16_exact = (a.view(np.uint32) & 0xFFFF0000).view(np.float32)
    assert np.array_equal(gguf.dequantize(gguf.to_bf16_bytes(bf16_exact), gguf.GGML_BF16, a.size).reshape(a.shape),
                          bf16_exact)
    amax = np.abs(a.reshape(-1, 32)).max(1, keepdims=True)
    err = np.abs(t["q8"][0].reshape(-1, 32) - a.reshape(-1, 32))
    assert np.all(err <= amax * Q8_0_SCALE_ERR)
    assert np.all(t["q8"][0][3] == 0)
    assert t["vec"][0].shape == (64,)


def test_export_roundtrip_and_keys():
    import export_gguf
    from model import gguf_name
    for tied in (True, False):
        m = small_torch_model(tied)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.gguf")
            export_gguf.export_model(m, path, TOKENIZER, "small")
            meta, t = gguf.read_tensors(path)
        c = m.c
        expect = {"general.architecture": "llama", "general.name": "small", "general.file_type": 1,
                  "llama.context_length": c.ctx_len, "llama.embedding_length": c.dim,
                  "llama.block_count": c.n_layers, "llama.feed_forward_length": c.ffn_dim,
                  "llama.rope.dimension_count": c.head_dim, "llama.attention.head_count": c.n_heads,
                  "llama.attention.head_count_kv": c.n_kv_heads, "llama.vocab_size": c.vocab_size,
                  "tokenizer.ggml.model": "llama", "tokenizer.ggml.bos_token_id": 1,
                  "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0}
        for k, v in expect.items():
            assert meta[k] == v, (k, meta.get(k), v)
        assert abs(meta["llama.attention.layer_norm_rms_epsilon"] - 1e-5) < 1e-12
        assert meta["llama.rope.freq_base"] == 10000.0
        assert len(meta["tokenizer.ggml.tokens"]) == 8000 and meta["tokenizer.ggml.tokens"][1] == "<s>"
        assert ("output.weight" in t) == (not tied)
        for name, p in m.state_dict().items():
            g = gguf_name(name)
            arr, ty = t[g]
            want = p.float().numpy()
            if p.dim() == 1:
                assert ty == gguf.GGML_F32 and np.array_equal(arr, want)
                continue
            assert ty == gguf.GGML_F16
            if g.endswith("attn_q.weight"):
                arr = gguf.unpermute_qk(arr, c.n_heads)
            elif g.endswith("attn_k.weight"):
                arr = gguf.unpermute_qk(arr, c.n_kv_heads)
            assert np.array_equal(arr, want.astype(np.float16).astype(np.float32)), g


def test_three_forwards_agree():
    """torch model.py == numpy GGML-convention forward on the exported GGUF
    == numpy HF-convention forward on ref_logits.py's state dict."""
    import export_gguf
    import ref_logits
    ids = [1, 450, 17, 3000, 22, 7999, 5, 260, 260, 1000, 42, 7]
    for tied in (True, False):
        m = small_torch_model(tied, seed=3)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.gguf")
            export_gguf.export_model(m, path, TOKENIZER, "small")
            meta, t = gguf.read_tensors(path)
        c = ref_logits.gguf_config(meta, t)
        assert c["tied"] == tied
        ours = f16_rounded_logits(m, ids)
        ggml = numpy_forward(weights_from_gguf(t, c), c, ids, rope_ggml)
        hf = numpy_forward(weights_from_hf(ref_logits.hf_state_dict(t, c), c), c, ids, rope_hf)
        assert ours.std() > 0.5, "logits too flat to test anything"
        assert np.abs(ggml - hf).max() < 1e-9
        assert np.abs(ours - ggml).max() < F32_FORWARD_TOL, np.abs(ours - ggml).max()


def test_make_test_model_fixture():
    import make_test_model as mtm
    import ref_logits
    with tempfile.TemporaryDirectory() as d:
        paths = [os.path.join(d, f"{i}.gguf") for i in range(2)]
        for p in paths:
            subprocess.run([sys.executable, os.path.join(TOOLS, "make_test_model.py"), p], check=True,
                           stdout=subprocess.DEVNULL)
        with open(paths[0], "rb") as f1, open(paths[1], "rb") as f2:
            assert f1.read() == f2.read(), "fixture is not deterministic"
        meta, t = gguf.read_tensors(paths[0])
    c = ref_logits.gguf_config(meta, t)
    assert (c["dim"], c["n_layers"], c["n_heads"], c["n_kv_heads"], c["ffn_dim"], c["ctx_len"]) == (256, 2, 4, 2, 384, 512)
    assert not c["tied"] and "output.weight" in t
    types = {n: ty for n, (_, ty) in t.items()}
    for n, ty in types.items():
        want = mtm.TYPES.get(n, gguf.GGML_F32 if n.endswith("norm.weight") else gguf.GGML_F16)
        assert ty == want, (n, ty, want)
    assert {gguf.GGML_F32, gguf.GGML_F16, gguf.GGML_BF16, gguf.GGML_Q8_0} <= set(types.values())
    assert meta["tokenizer.ggml.tokens"] == [sp_model().id_to_piece(i) for i in range(8000)]
    ids = ref_logits.prompts(TOKENIZER)[1]
    logits = numpy_forward(weights_from_gguf(t, c), c, ids, rope_ggml)
    assert logits.std() > 0.5, f"fixture logits too flat: std {logits.std()}"
    assert len(set(logits.argmax(-1).tolist())) > 1


def test_logits_file_roundtrip():
    import ref_logits
    ids = ref_logits.prompts(TOKENIZER)
    assert [len(x) for x in ids] == list(ref_logits.PROMPT_LENGTHS) and all(x[0] == 1 for x in ids)
    rng = np.random.default_rng(4)
    logits = [rng.standard_normal((len(x), 8000)).astype(np.float32) for x in ids]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "l.bin")
        ref_logits.write_logits(path, ids, logits)
        assert os.path.getsize(path) == 24 + sum(4 + 4 * len(x) + 4 * 8000 * len(x) for x in ids)
        back = ref_logits.read_logits(path)
    for (bi, bl), i, lg in zip(back, ids, logits):
        assert bi.tolist() == i and np.array_equal(bl, lg)


def test_check_logits_catches_differences():
    """--check-logits passes on logits of the same model and fails on
    another model's (torch model.py stands in for HF here)."""
    import export_gguf
    import ref_logits
    import torch
    ids = [[1, 5, 900, 42], [1, 7000, 3, 17, 300, 301]]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.gguf")
        m = small_torch_model(False, seed=6)
        export_gguf.export_model(m, path, TOKENIZER, "small")
        logits = [f16_rounded_logits(m, x).astype(np.float32) for x in ids]
        ref_logits.write_logits(os.path.join(d, "ok.bin"), ids, logits)
        assert check_logits_file(path, os.path.join(d, "ok.bin")) < F32_FORWARD_TOL
        other = small_torch_model(False, seed=7)
        with torch.no_grad():
            bad = [other(torch.tensor([x])).float().numpy()[0] for x in ids]
        ref_logits.write_logits(os.path.join(d, "bad.bin"), ids, bad)
        assert check_logits_file(path, os.path.join(d, "bad.bin")) > 1.0


def test_tokenizer_settings():
    sp = sp_model()
    assert sp.get_piece_size() == 8000
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    assert all(sp.is_byte(i) for i in range(3, 259)) and sp.id_to_piece(3 + 0x0A) == "<0x0A>"
    pieces = sp.encode("pass key 12345", out_type=str)
    assert pieces[-5:] == list("12345"), pieces  # split_digits
    assert pieces[0] == "\u2581pass"  # add_dummy_prefix
    for text in ("Two  spaces", "tab\there", "line\n\nbreak", "caf\u00e9 \u00a3 \u2603", " lead"):
        assert sp.decode(sp.encode(text)) == text, text  # identity normalisation, byte fallback
    assert sp.encode("\u00ff") != [0], "byte fallback, no UNK"


def test_corpus_token_files():
    if not os.path.exists(os.path.join(TOKENS, "heldout.bin")):
        raise Skip("corpus/tokens not built")
    sp = sp_model()
    held = np.fromfile(os.path.join(TOKENS, "heldout.bin"), dtype="<u2")
    with open(HELDOUT, encoding="utf-8") as f:
        assert held.tolist() == [1] + sp.encode(f.read())
    train = np.fromfile(os.path.join(TOKENS, "train.bin"), dtype="<u2")
    assert train[0] == 1 and train[-1] == 2 and train.max() < 8000
    assert np.count_nonzero(train == 1) == np.count_nonzero(train == 2)
    for name in ("heldout.txt", "calibration.txt"):
        assert os.path.getsize(os.path.join(ROOT, "models", name)) <= 1_000_000


def test_passkey_prompt_contract():
    sp = sp_model()
    with open(HELDOUT, encoding="utf-8") as f:
        sentences = passkey.filler_sentences(f.read())
    assert all("\n" not in s and not s.startswith(" ") and not s.endswith(" ") for s in sentences)
    b = passkey.PromptBuilder(sentences, sp.encode, sp.bos_id())
    rng = random.Random(5)
    shape = re.compile(re.escape(passkey.HEADER) + r"(.+) The pass key is (\d{5})\. Remember it\. \2 is the pass key\. "
                       r"(.+)" + re.escape(passkey.QUESTION) + r"$", re.S)
    for target in (128, 256, 1024, 2048, 4096):
        for _ in range(5):
            key = passkey.random_key(rng)
            prompt, ids, depth = b.build(target, key, rng)
            assert ids == [1] + sp.encode(prompt)
            assert len(ids) <= target - passkey.ANSWER_BUDGET
            m = shape.match(prompt)
            assert m and m.group(2) == str(key), prompt[:200]
            part1, part2 = m.group(1), m.group(3)
            assert part1.endswith((".", "!", "?")) and "\n" not in part1 + part2
            assert 0 < depth < 1
            answer = passkey.answer_ids(sp.encode, key)
            assert [1] + sp.encode(prompt + passkey.ANSWER.format(key=key)) == ids + answer
            assert len(answer) + 1 <= passkey.ANSWER_BUDGET
    assert passkey.check_answer(" 12345.", 12345) and passkey.check_answer("12345", 12345)
    assert not passkey.check_answer(" 123456.", 12345) and not passkey.check_answer(" 1234", 12345)
    assert not passkey.check_answer(" the key", 12345) and not passkey.check_answer(" 54321 12345", 12345)


def test_passkey_filler_is_maximal():
    """n is the largest count of whole sentences that fits."""
    sp = sp_model()
    with open(HELDOUT, encoding="utf-8") as f:
        sentences = passkey.filler_sentences(f.read())
    b = passkey.PromptBuilder(sentences, sp.encode, sp.bos_id())
    for seed in range(10):
        rng = random.Random(seed)
        key = passkey.random_key(rng)
        state = rng.getstate()
        prompt, ids, _ = b.build(1024, key, rng)
        rng.setstate(state)
        s0 = rng.randrange(len(sentences))  # build's first draw (it fits at 1024)
        part = prompt[len(passkey.HEADER):-len(passkey.QUESTION)]
        n = len(passkey.filler_sentences(part.replace(passkey.KEY_SENTENCE.format(key=key), " ")))
        longer = passkey.HEADER + " ".join(sentences[(s0 + i) % len(sentences)] for i in range(n + 1))
        longer += passkey.KEY_SENTENCE.format(key=key).rstrip() + passkey.QUESTION
        assert 1 + len(sp.encode(longer)) > 1024 - passkey.ANSWER_BUDGET


def test_passkey_example_is_current():
    """tools/passkey_example.json (the C test vector) is what passkey.py makes."""
    import json
    with open(os.path.join(TOOLS, "passkey_example.json"), encoding="utf-8") as f:
        stored = json.load(f)
    sp = sp_model()
    for ex, args in zip(stored, passkey.EXAMPLES):
        assert ex == passkey.example(TOKENIZER, HELDOUT, *args)
        assert ex["ids"] == [1] + sp.encode(ex["prompt"])
        assert ex["n_tokens"] <= ex["target_len"] - passkey.ANSWER_BUDGET
    assert len(stored) == len(passkey.EXAMPLES)


def test_train_tiny_end_to_end():
    """train.py --tiny: trains, evaluates, writes checkpoint, GGUF, CSV and
    summary; the GGUF's numpy GGML forward equals the checkpoint's logits."""
    if not os.path.exists(os.path.join(TOKENS, "train.bin")):
        raise Skip("corpus/tokens not built")
    import json
    import ref_logits
    from model import load_checkpoint
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, os.path.join(TOOLS, "train.py"), "--tiny", "--out", d],
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        with open(os.path.join(d, "summary.json")) as f:
            s = json.load(f)
        assert s["steps"] > 0 and s["tokens_seen"] > 0
        assert s["final_train_loss"] < math.log(8000) - 1.0, s["final_train_loss"]
        assert set(s["passkey_accuracy"]) == {str(n) for n in s["hyperparameters"]["passkey_lengths"]}
        assert all(0.0 <= v["accuracy"] <= 1.0 for v in s["passkey_accuracy"].values())
        assert all(math.isfinite(v["perplexity"]) for v in s["heldout"].values())
        with open(os.path.join(d, "loss.csv")) as f:
            rows = f.read().strip().split("\n")
        assert rows[0].startswith("step,") and len(rows) >= 3
        meta, t = gguf.read_tensors(os.path.join(d, "model.gguf"))
        c = ref_logits.gguf_config(meta, t)
        model, _ = load_checkpoint(os.path.join(d, "model.pt"))
        ids = [1] + sp_model().encode("It was a fine morning in the country.")
        ours = f16_rounded_logits(model.eval(), ids)
        ggml = numpy_forward(weights_from_gguf(t, c), c, ids, rope_ggml)
        assert np.abs(ours - ggml).max() < F32_FORWARD_TOL


# ================================================================ runner

def check_logits_file(gguf_path, logits_path):
    """Compares a ref_logits.py file (HF) with the numpy GGML-convention
    forward on the same GGUF. Returns the max |diff|."""
    import ref_logits
    meta, t = gguf.read_tensors(gguf_path)
    c = ref_logits.gguf_config(meta, t)
    w = weights_from_gguf(t, c)
    worst = 0.0
    for ids, hf in ref_logits.read_logits(logits_path):
        ours = numpy_forward(w, c, ids.tolist(), rope_ggml)
        worst = max(worst, float(np.abs(ours - hf).max()))
    return worst


def main():
    if "--check-logits" in sys.argv:
        i = sys.argv.index("--check-logits")
        worst = check_logits_file(sys.argv[i + 1], sys.argv[i + 2])
        print(f"numpy GGML forward vs {sys.argv[i + 2]}: max |diff| = {worst:.3e} (tolerance {HF_VS_NUMPY_TOL})")
        sys.exit(0 if worst <= HF_VS_NUMPY_TOL else 1)
    only = sys.argv[sys.argv.index("-k") + 1] if "-k" in sys.argv else ""
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_") and only in n]
    passed = failed = skipped = 0
    for name, fn in tests:
        try:
            fn()
            passed += 1
            print(f"PASS {name}")
        except Skip as e:
            skipped += 1
            print(f"SKIP {name}: {e}")
        except Exception:  # noqa: BLE001 - report every failure, run the rest
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
