#!/usr/bin/python3
"""make_gguf_testdata.py: writes tests/data/gguf-types.gguf, the fixture of
tests/test_core_gguf.c, with tools/gguf.py.

It holds one metadata value of every GGUF type (the extremes of each integer
type), an array of every element type, and tensors of every type the reader
converts (F32, F16, BF16, Q8_0) with 1 to 4 dims. The F16, BF16 and Q8_0
tensors come with an F32 "<name>.expect" twin: the values numpy itself gets
back from those bytes, so the C test checks our conversion against numpy,
not against our own code. The C test recomputes test_values() (keep the two
in step).

Run: /usr/bin/python3 tools/make_gguf_testdata.py
"""

import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "gguf-types.gguf")
ALIGNMENT = 64  # not the default 32, so that general.alignment is exercised


def test_values(n):
    """Deterministic floats with a full 24-bit mantissa in [-8, 8), exactly
    representable in float32: ((i * 2654435761) mod 2^24 - 2^23) * 2^-20."""
    i = np.arange(n, dtype=np.int64)
    k = (i * 2654435761) % (1 << 24) - (1 << 23)
    return k.astype(np.float32) * np.float32(2.0 ** -20)


def q8_0_dequantize(data):
    blocks = np.frombuffer(data, dtype=[("d", "<f2"), ("qs", "i1", gguf.QK8_0)])
    return (blocks["d"].astype(np.float32)[:, None] * blocks["qs"].astype(np.float32)).reshape(-1)


def main():
    w = gguf.GGUFWriter(alignment=ALIGNMENT)
    w.add("test.u8", gguf.UINT8, 255)
    w.add("test.i8", gguf.INT8, -128)
    w.add("test.u16", gguf.UINT16, 65535)
    w.add("test.i16", gguf.INT16, -32768)
    w.add("test.u32", gguf.UINT32, 2**32 - 1)
    w.add("test.i32", gguf.INT32, -(2**31))
    w.add("test.f32", gguf.FLOAT32, math.pi)
    w.add("test.bool_true", gguf.BOOL, True)
    w.add("test.bool_false", gguf.BOOL, False)
    w.add("test.string", gguf.STRING, "h\u00e9llo \u2581w\u00f6rld \u65e5\u672c")
    w.add("test.empty_string", gguf.STRING, "")
    w.add("test.u64", gguf.UINT64, 2**64 - 1)
    w.add("test.i64", gguf.INT64, -(2**63))
    w.add("test.f64", gguf.FLOAT64, math.pi)
    w.add("test.small_i64", gguf.INT64, -7)  # fits every signed getter
    w.add("test.small_u64", gguf.UINT64, 7)  # fits every getter
    w.add_array("test.array.u8", gguf.UINT8, [0, 1, 255])
    w.add_array("test.array.i8", gguf.INT8, [-128, 0, 127])
    w.add_array("test.array.u16", gguf.UINT16, [0, 65535])
    w.add_array("test.array.i16", gguf.INT16, [-32768, 32767])
    w.add_array("test.array.u32", gguf.UINT32, [0, 2**32 - 1, 12345])
    w.add_array("test.array.i32", gguf.INT32, [-(2**31), 2**31 - 1])
    w.add_array("test.array.f32", gguf.FLOAT32, [-1.5, 0.0, 1e30])
    w.add_array("test.array.bool", gguf.BOOL, [True, False, True])
    w.add_array("test.array.string", gguf.STRING, ["a", "", "\u2581x", "\u65e5\u672c\u8a9e"])
    w.add_array("test.array.u64", gguf.UINT64, [0, 2**64 - 1])
    w.add_array("test.array.i64", gguf.INT64, [-(2**63), 2**63 - 1])
    w.add_array("test.array.f64", gguf.FLOAT64, [math.e, -0.0])
    w.add_array("test.array.empty", gguf.UINT32, [])

    # (name, numpy shape, type); GGUF stores the shape reversed.
    specs = [("f32", (3, 5, 7), gguf.GGML_F32), ("f16", (37,), gguf.GGML_F16),
             ("bf16", (2, 1, 3, 17), gguf.GGML_BF16), ("q8_0", (3, 64), gguf.GGML_Q8_0)]
    for name, shape, ggml_type in specs:
        x = test_values(int(np.prod(shape))).reshape(shape)
        w.add_tensor(name, x, ggml_type)
        data = w.tensors[-1][3]
        if ggml_type == gguf.GGML_F16:
            expect = np.frombuffer(data, dtype="<f2").astype(np.float32)
        elif ggml_type == gguf.GGML_BF16:
            expect = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif ggml_type == gguf.GGML_Q8_0:
            expect = q8_0_dequantize(data)
        else:
            continue
        w.add_tensor(name + ".expect", expect.reshape(shape), gguf.GGML_F32)
    w.write(OUT)
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
