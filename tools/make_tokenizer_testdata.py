#!/usr/bin/python3
"""make_tokenizer_testdata.py: the tokenizer's test data, made by sentencepiece
itself, so that tests/test_core_tokenizer.c checks core/tokenizer.c against
the reference implementation.

1. Trains a small SentencePiece BPE model (vocab 2000, byte_fallback,
   split_digits, two user-defined symbols) on public-domain text from the
   `fortunes` package. The normalizer settings are LLaMA's (identity rule,
   dummy prefix, extra whitespace kept): a GGUF stores no normalizer, and
   these are the settings a `llama` tokenizer in GGUF implies.
2. Writes its vocabulary with tools/gguf.py's add_llama_tokenizer into
   tests/data/vocab-test.gguf (no tensors), and the same model restricted
   with set_vocabulary (every third piece unused, which exercises
   sentencepiece's re-segmentation of unused pieces) into
   tests/data/vocab-test-unused.gguf.
3. Writes tests/data/tokenizer-cases.tsv: vocab name, input text, the ids
   sentencepiece encodes it to (no BOS), and whether sentencepiece (the
   unrestricted model) decodes them back to the text. Inputs: hand-written cases (punctuation, digits,
   whitespace runs, leading/trailing spaces, accents, CJK, emoji, the empty
   string, user-defined symbols) and fortunes from files not used for
   training.
4. Writes tests/data/tokenizer-decode-cases.tsv: random id sequences (heavy
   in byte pieces, split and broken UTF-8, control and unknown tokens) and
   the text sentencepiece decodes them to.

Texts are escaped: backslash, \\t, \\n, \\r and \\xNN for other control bytes.

Run: /usr/bin/python3 tools/make_tokenizer_testdata.py  (needs the fortunes
package: apt-get install fortunes)
"""

import os
import random
import re
import sys
import tempfile

import sentencepiece as spm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DATA = os.path.join(ROOT, "tests", "data")
FORTUNES = "/usr/share/games/fortunes"
TRAIN_FILES = ("fortunes wisdom literature people humorists science work computers linux law pets "
               "food education platitudes songs-poems riddles tao goedel magic paradoxum news "
               "startrek pratchett politics love medicine men-women sports").split()
HELD_OUT_FILES = ["kids", "miscellaneous", "cookie", "definitions"]
USER_DEFINED = ["<sep>", "llmd"]
VOCAB_SIZE = 2000
SEED = 20240601

HAND_WRITTEN = [
    "",
    "a",
    " ",
    "\n",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! (yes) -- 'quoted' \"double\"; a:b? [x] {y} <z> @#$%^&*_+=|~`",
    "In 1984, 2+2=5 and 3.14159 is close to pi; call 555-0100 at 10:30pm.",
    "0123456789 00 007 1000000",
    "a    b",
    "\t\tindented with tabs",
    "line1\nline2\n\nline4\n",
    "  \t \n  ",
    "\r\n windows line\r\n",
    " lead",
    "trail ",
    "   both   ",
    "  ",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9",
    "\u00dcn\u00efc\u00f6d\u00e9 \u00c5ngstr\u00f6m",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\U0001F600\U0001F389 emoji \U0001F44D\U0001F3FD",
    "Z\u00fcrich \u6771\u4eac \U0001F600 ok",
    "e\u0301 combining",
    "\u2581 a literal space marker \u2581\u2581",
    "\ufffd replacement",
    "llmd serves llmd",
    "x<sep>y<sep>",
    "<sep>",
    "llmdllmd",
    "<s> and </s> and <unk> are plain text",
    "<0x41> is not a byte",
    "a" * 100,
    "the " * 50,
    "Mississippi mississippi MISSISSIPPI",
    "\u0000 nul and \u0007 bell",
]


def escape(s):
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append("\\x%02x" % ord(ch))
        else:
            out.append(ch)
    return "".join(out)


def read_fortunes(name):
    """The fortunes of one file, without the control characters some carry
    (overstriking)."""
    text = open(os.path.join(FORTUNES, name), encoding="utf-8", errors="replace").read()
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)
    return [f.strip("\n") for f in text.split("\n%\n") if f.strip()]


def train(workdir):
    lines = []
    for name in TRAIN_FILES:
        for fortune in read_fortunes(name):
            lines.extend(line for line in fortune.split("\n") if line.strip())
    corpus = os.path.join(workdir, "train.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    prefix = os.path.join(workdir, "vocab-test")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, model_type="bpe", vocab_size=VOCAB_SIZE,
        byte_fallback=True, split_digits=True, user_defined_symbols=USER_DEFINED,
        normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        num_threads=1, minloglevel=2)
    return prefix + ".model"


def write_vocab(model, path, unused_ids=()):
    """The vocabulary of `model`, with the pieces in unused_ids typed unused."""
    w = gguf.GGUFWriter()
    w.add_string("general.architecture", "llama")
    gguf.add_llama_tokenizer(w, model, user_defined_symbols=USER_DEFINED)
    for k, (key, vtype, types, elem_type) in enumerate(w.kv):
        if key == "tokenizer.ggml.token_type":
            types = [gguf.TOKEN_UNUSED if i in unused_ids else t for i, t in enumerate(types)]
            w.kv[k] = (key, vtype, types, elem_type)
    w.write(path)


def restrict(model, sp):
    """The model restricted with set_vocabulary to all but every third normal
    piece, and the ids it then calls unused. (set_vocabulary also retypes the
    byte and user-defined pieces in its copy of the model; the GGUF keeps
    their types, so only encoding is compared for this vocabulary.)"""
    restricted = spm.SentencePieceProcessor(model_file=model)
    keep = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
            if i % 3 or sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i)
            or sp.id_to_piece(i) in USER_DEFINED]
    restricted.set_vocabulary(keep)
    unused = {i for i in range(sp.get_piece_size()) if restricted.is_unused(i)}
    return restricted, unused


def held_out_texts():
    rng = random.Random(SEED)
    texts = []
    for name in HELD_OUT_FILES:
        fortunes = read_fortunes(name)
        texts.extend(rng.sample(fortunes, min(40, len(fortunes))))
    texts.append("\n".join(texts[:60]))  # one long text, several KB
    return texts


def random_decode_cases(sp, rng, n):
    """Id sequences that stress the decoder: byte pieces (parts of real
    UTF-8 characters, and stray bytes), control and unknown tokens, and
    pieces with and without the leading space marker."""
    byte_id = {b: sp.piece_to_id("<0x%02X>" % b) for b in range(256)}
    specials = [sp.unk_id(), sp.bos_id(), sp.eos_id()]
    normal = [i for i in range(sp.get_piece_size())
              if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i))]
    chars = "\u00e9\u00fc\u65e5\u672c\U0001F600\u20ac\u0416"
    cases = []
    for _ in range(n):
        ids = []
        for _ in range(rng.randint(1, 10)):
            r = rng.random()
            if r < 0.35:
                ids.extend(byte_id[b] for b in rng.choice(chars).encode("utf-8"))
            elif r < 0.5:
                ids.append(byte_id[rng.randrange(256)])
            elif r < 0.6:
                ids.append(rng.choice(specials))
            else:
                ids.append(rng.choice(normal))
        if rng.random() < 0.3 and len(ids) > 1:
            del ids[rng.randrange(len(ids))]  # may split a character
        cases.append(ids)
    return cases


def main():
    with tempfile.TemporaryDirectory() as workdir:
        model = train(workdir)
        sp = spm.SentencePieceProcessor(model_file=model)
        restricted, unused = restrict(model, sp)
        write_vocab(model, os.path.join(DATA, "vocab-test.gguf"))
        write_vocab(model, os.path.join(DATA, "vocab-test-unused.gguf"), unused)

        texts = HAND_WRITTEN + held_out_texts()
        with open(os.path.join(DATA, "tokenizer-cases.tsv"), "w", encoding="utf-8") as f:
            f.write("# written by tools/make_tokenizer_testdata.py with sentencepiece "
                    f"{spm.__version__}\n")
            f.write("# vocab\ttext (escaped)\tids sentencepiece encodes it to (no BOS)\t"
                    "1 when sentencepiece decodes them back to the text\n")
            for vocab, proc in (("main", sp), ("unused", restricted)):
                for text in texts:
                    ids = proc.encode(text)
                    round_trips = int(sp.decode(ids) == text)
                    f.write(f"{vocab}\t{escape(text)}\t{' '.join(map(str, ids))}\t{round_trips}\n")

        rng = random.Random(SEED)
        with open(os.path.join(DATA, "tokenizer-decode-cases.tsv"), "w", encoding="utf-8") as f:
            f.write("# written by tools/make_tokenizer_testdata.py with sentencepiece "
                    f"{spm.__version__}\n")
            f.write("# ids (main vocab)\ttext sentencepiece decodes them to (escaped)\n")
            for ids in random_decode_cases(sp, rng, 300):
                f.write(f"{' '.join(map(str, ids))}\t{escape(sp.decode(ids))}\n")
    for name in ("vocab-test.gguf", "vocab-test-unused.gguf", "tokenizer-cases.tsv",
                 "tokenizer-decode-cases.tsv"):
        path = os.path.join(DATA, name)
        print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
