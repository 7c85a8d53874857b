"""gguf.py: our own GGUF v3 writer (and a small reader for checks).

Used by tools/export_gguf.py (the trained model), the test-fixture generator
and the tokenizer test data. Needs only numpy.

Layout of a GGUF v3 file: magic "GGUF", version 3, tensor count, metadata
count; the metadata key/value pairs; the tensor infos (name, dims with the
fastest-varying first, type, offset into the data section); padding to
`general.alignment`; the tensor data, each tensor aligned.
"""

import struct

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32

# metadata value types
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)

# ggml tensor types
GGML_F32, GGML_F16, GGML_Q8_0, GGML_BF16 = 0, 1, 8, 30
QK8_0 = 32

# SentencePiece token types as llama.cpp stores them
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


def _string(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _scalar(vtype, v):
    fmt = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
           FLOAT32: "<f", BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}[vtype]
    return struct.pack(fmt, v)


def _value(vtype, v, elem_type=None):
    if vtype == STRING:
        return _string(v)
    if vtype == ARRAY:
        out = struct.pack("<IQ", elem_type, len(v))
        if elem_type == STRING:
            return out + b"".join(_string(x) for x in v)
        dtype = {UINT8: "<u1", INT8: "<i1", UINT16: "<u2", INT16: "<i2", UINT32: "<u4", INT32: "<i4",
                 FLOAT32: "<f4", BOOL: "?", UINT64: "<u8", INT64: "<i8", FLOAT64: "<f8"}[elem_type]
        return out + np.asarray(v, dtype=dtype).tobytes()
    return _scalar(vtype, v)


def quantize_q8_0(a):
    """Blocks of 32 along the last axis: an f16 scale, then 32 int8."""
    a = np.asarray(a, dtype=np.float32)
    assert a.shape[-1] % QK8_0 == 0
    blocks = a.reshape(-1, QK8_0)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    d = amax / 127.0
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0)
    q = np.round(blocks * inv).astype(np.int8)
    out = np.zeros(len(blocks), dtype=[("d", "<f2"), ("qs", "i1", QK8_0)])
    out["d"] = d[:, 0].astype(np.float16)
    out["qs"] = q
    return out.tobytes()


def to_bf16_bytes(a):
    """Round-to-nearest-even float32 -> bfloat16."""
    u = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16).tobytes()


class GGUFWriter:
    """Collects metadata and tensors, then writes one GGUF v3 file."""

    def __init__(self, alignment=ALIGNMENT):
        self.alignment = alignment
        self.kv = []  # (key, vtype, value, elem_type)
        self.tensors = []  # (name, shape numpy-order, ggml type, bytes)
        if alignment != ALIGNMENT:
            self.add("general.alignment", UINT32, alignment)

    def add(self, key, vtype, value, elem_type=None):
        self.kv.append((key, vtype, value, elem_type))

    def add_string(self, key, value):
        self.add(key, STRING, value)

    def add_u32(self, key, value):
        self.add(key, UINT32, value)

    def add_f32(self, key, value):
        self.add(key, FLOAT32, value)

    def add_bool(self, key, value):
        self.add(key, BOOL, value)

    def add_array(self, key, elem_type, values):
        self.add(key, ARRAY, list(values), elem_type)

    def add_tensor(self, name, array, ggml_type=GGML_F32):
        """`array` in numpy (row-major) order; GGUF stores dims reversed."""
        a = np.ascontiguousarray(array, dtype=np.float32)
        if ggml_type == GGML_F32:
            data = a.tobytes()
        elif ggml_type == GGML_F16:
            data = a.astype(np.float16).tobytes()
        elif ggml_type == GGML_BF16:
            data = to_bf16_bytes(a)
        elif ggml_type == GGML_Q8_0:
            data = quantize_q8_0(a)
        else:
            raise ValueError(f"unsupported tensor type {ggml_type}")
        self.tensors.append((name, a.shape, ggml_type, data))

    def _pad(self, n):
        return (-n) % self.alignment

    def write(self, path):
        header = GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(self.tensors), len(self.kv))
        for key, vtype, value, elem_type in self.kv:
            header += _string(key) + struct.pack("<I", vtype) + _value(vtype, value, elem_type)
        offset = 0
        for name, shape, ggml_type, data in self.tensors:
            dims = list(reversed(shape))
            header += _string(name) + struct.pack("<I", len(dims))
            header += struct.pack(f"<{len(dims)}Q", *dims)
            header += struct.pack("<IQ", ggml_type, offset)
            offset += len(data) + self._pad(len(data))
        with open(path, "wb") as f:
            f.write(header)
            f.write(b"\0" * self._pad(len(header)))
            for _, _, _, data in self.tensors:
                f.write(data)
                f.write(b"\0" * self._pad(len(data)))


def permute_qk(w, n_head):
    """HF's rotate-half Q/K rows -> the interleaved pair order GGUF readers
    (llama.cpp's convert script) use for LLaMA's RoPE."""
    w = np.asarray(w)
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
             .swapaxes(1, 2).reshape(w.shape))


def add_llama_tokenizer(writer, sp_model_proto_path, user_defined_symbols=()):
    """Stores a SentencePiece model as a `llama` tokenizer: tokens, scores,
    token types, BOS/EOS/UNK ids, add_bos. Needs the sentencepiece module.
    sentencepiece's Python API cannot tell user-defined pieces from normal
    ones: pass the model's user_defined_symbols to store them as
    TOKEN_USER_DEFINED (the tokenizer matches those whole)."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=sp_model_proto_path)
    user_defined = set(user_defined_symbols)
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if tokens[-1] in user_defined:
            types.append(TOKEN_USER_DEFINED)
        elif sp.is_unknown(i):
            types.append(TOKEN_UNKNOWN)
        elif sp.is_control(i):
            types.append(TOKEN_CONTROL)
        elif sp.is_byte(i):
            types.append(TOKEN_BYTE)
        elif sp.is_unused(i):
            types.append(TOKEN_UNUSED)
        else:
            types.append(TOKEN_NORMAL)
    writer.add_string("tokenizer.ggml.model", "llama")
    writer.add_array("tokenizer.ggml.tokens", STRING, tokens)
    writer.add_array("tokenizer.ggml.scores", FLOAT32, scores)
    writer.add_array("tokenizer.ggml.token_type", INT32, types)
    writer.add_u32("tokenizer.ggml.bos_token_id", sp.bos_id())
    writer.add_u32("tokenizer.ggml.eos_token_id", sp.eos_id())
    writer.add_u32("tokenizer.ggml.unknown_token_id", sp.unk_id())
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_bool("tokenizer.ggml.add_eos_token", False)
    return sp.get_piece_size()


def unpermute_qk(w, n_head):
    """The inverse of permute_qk: GGUF's interleaved Q/K rows -> HF's
    rotate-half order."""
    w = np.asarray(w)
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
             .swapaxes(1, 2).reshape(w.shape))


def read_header(path):
    """Minimal reader for checks: returns (metadata dict, tensor info list)."""
    meta, infos, _ = _parse(path)
    return meta, infos


def _parse(path):
    """Returns (metadata, tensor infos, the file's bytes with the data
    section's offset): infos are (name, dims fastest-first, type, offset)."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v[0] if len(v) == 1 else v

    def string():
        nonlocal pos
        n = take("<Q")
        s = data[pos:pos + n].decode("utf-8")
        pos += n
        return s

    def value(vtype):
        if vtype == STRING:
            return string()
        if vtype == ARRAY:
            et, n = take("<I"), take("<Q")
            return [value(et) for _ in range(n)]
        fmt = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
               FLOAT32: "<f", BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}[vtype]
        return take(fmt)

    assert data[:4] == GGUF_MAGIC
    pos = 4
    version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
    assert version == GGUF_VERSION
    meta = {}
    for _ in range(n_kv):
        k = string()
        meta[k] = value(take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        nd = take("<I")
        dims = [take("<Q") for _ in range(nd)]
        infos.append((name, dims, take("<I"), take("<Q")))
    align = meta.get("general.alignment", ALIGNMENT)
    return meta, infos, (data, pos + (-pos) % align)


# ggml block sizes: (elements per block, bytes per block)
_BLOCK = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_BF16: (1, 2), GGML_Q8_0: (QK8_0, 2 + QK8_0)}


def dequantize(raw, ggml_type, n_elements):
    """Bytes of one tensor -> float32 values, in file order."""
    if ggml_type == GGML_F32:
        return np.frombuffer(raw, dtype="<f4", count=n_elements).copy()
    if ggml_type == GGML_F16:
        return np.frombuffer(raw, dtype="<f2", count=n_elements).astype(np.float32)
    if ggml_type == GGML_BF16:
        u = np.frombuffer(raw, dtype="<u2", count=n_elements).astype(np.uint32) << 16
        return u.view(np.float32)
    if ggml_type == GGML_Q8_0:
        blocks = np.frombuffer(raw, dtype=[("d", "<f2"), ("qs", "i1", QK8_0)],
                               count=n_elements // QK8_0)
        return (blocks["d"].astype(np.float32)[:, None] * blocks["qs"].astype(np.float32)).reshape(-1)
    raise ValueError(f"unsupported tensor type {ggml_type}")


def read_tensors(path):
    """Reads a whole GGUF file: returns (metadata dict, {name: (float32
    array in numpy order, i.e. dims reversed, ggml type)}). Checks that
    every tensor lies inside the file."""
    meta, infos, (data, start) = _parse(path)
    tensors = {}
    for name, dims, ggml_type, offset in infos:
        n = int(np.prod(dims)) if dims else 1
        per_block, block_bytes = _BLOCK[ggml_type]
        assert n % per_block == 0, f"{name}: {n} elements is not whole blocks"
        n_bytes = n // per_block * block_bytes
        begin = start + offset
        assert begin + n_bytes <= len(data), f"{name} runs past the end of the file"
        values = dequantize(data[begin:begin + n_bytes], ggml_type, n)
        tensors[name] = (values.reshape(list(reversed(dims))), ggml_type)
    return meta, tensors
