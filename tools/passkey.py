"""passkey.py: the passkey-retrieval prompt (the contract in tools/PASSKEY.md,
which `llmd passkey` implements in C) and its check.

Used by train.py twice: to make training samples (filler from the training
text) and to measure retrieval (filler from models/heldout.txt).
"""

import os
import random
import re

import numpy as np

HEADER = ("There is an important pass key hidden inside a lot of irrelevant text. "
          "Find it and memorize it. I will quiz you about the pass key.\n\n")
KEY_SENTENCE = " The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\n\nWhat is the pass key? The pass key is"
ANSWER = " {key}."
# Tokens left free after the prompt for the answer: the prompt has at most
# target_len - ANSWER_BUDGET tokens, so prompt and answer fit in target_len.
ANSWER_BUDGET = 8
KEY_MIN, KEY_MAX = 10000, 99999
MAX_START_DRAWS = 100

_SENTENCE_END = re.compile(r"(?<=[.!?]) ")
_WHITESPACE = re.compile(r"[ \t\n\r\v\f]+")  # ASCII only, as in C


def filler_sentences(text):
    """Runs of ASCII whitespace (newlines included) become one space; the
    text is cut after every '.', '!' or '?' that a space follows, the space
    dropped."""
    flat = _WHITESPACE.sub(" ", text).strip(" ")
    return [s for s in _SENTENCE_END.split(flat) if s]


class PromptBuilder:
    """Builds prompts from one filler source. `encode` is a function from a
    string to token ids without BOS (SentencePiece's encode: it adds the
    dummy-prefix space itself); `bos` the BOS id."""

    def __init__(self, sentences, encode, bos):
        assert len(sentences) >= 2
        self.sentences = sentences
        self.encode = encode
        self.bos = bos

    def _sentence(self, i):
        return self.sentences[i % len(self.sentences)]

    def build(self, target_len, key, rng):
        """Returns (prompt string, prompt ids with BOS, depth as a fraction).
        rng: random.Random. Draws the start sentence, then the depth."""
        budget = target_len - ANSWER_BUDGET
        key_sentence = KEY_SENTENCE.format(key=key)
        for _ in range(MAX_START_DRAWS):
            s0 = rng.randrange(len(self.sentences))
            # two sentences, one on each side of the key, are the least
            total = 1 + len(self.encode(HEADER + self._sentence(s0) + key_sentence
                                        + self._sentence(s0 + 1) + QUESTION))
            if total <= budget:
                break
        else:
            raise ValueError(f"no filler start fits {target_len} tokens")
        n = 2
        # A sentence after the first follows a space: it adds the tokens it
        # has on its own (BPE pieces never span a space or a newline).
        while n < len(self.sentences):
            c = len(self.encode(self._sentence(s0 + n)))
            if total + c > budget:
                break
            total += c
            n += 1
        j = rng.randint(1, n - 1)
        part1 = " ".join(self._sentence(s0 + i) for i in range(j))
        part2 = " ".join(self._sentence(s0 + i) for i in range(j, n))
        prompt = HEADER + part1 + key_sentence + part2 + QUESTION
        ids = [self.bos] + list(self.encode(prompt))
        if len(ids) != total:
            raise AssertionError(f"prompt has {len(ids)} tokens, counted {total}")
        return prompt, ids, j / n


def random_key(rng):
    return rng.randint(KEY_MIN, KEY_MAX)


def answer_ids(encode, key):
    """The answer's ids as they follow the prompt: encode(" 12345.") minus
    the dummy-prefix piece it starts with (the prompt's last word is not
    followed by a space, so the answer's leading space is its own)."""
    ids = list(encode("x" + ANSWER.format(key=key)))
    head = list(encode("x"))
    assert ids[:len(head)] == head
    return ids[len(head):]


_DIGITS = re.compile(r"[0-9]+")


def check_answer(generated_text, key):
    """The first run of digits in the generated text must be the key."""
    m = _DIGITS.search(generated_text)
    return m is not None and m.group(0) == str(key)


# ================================================== training-sample workers
# Run in worker processes (multiprocessing "spawn"): this module imports no
# torch, so workers start fast. Filler for training comes from the training
# text itself, decoded back from corpus/tokens/train.bin.

_worker = {}


def training_filler(sp, ids, bos, eos):
    """The sentences of every training document, in file order."""
    sentences = []
    starts = np.flatnonzero(ids == bos)
    ends = np.append(starts[1:], len(ids))
    for s, e in zip(starts, ends):
        doc = ids[s + 1:e]
        if len(doc) and doc[-1] == eos:
            doc = doc[:-1]
        sentences += filler_sentences(sp.decode(doc.tolist()))
    return sentences


def worker_init(tokens_path, tokenizer_path):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    ids = np.fromfile(tokens_path, dtype="<u2").astype(np.int32)
    sentences = training_filler(sp, ids, sp.bos_id(), sp.eos_id())
    _worker["sp"] = sp
    _worker["builder"] = PromptBuilder(sentences, sp.encode, sp.bos_id())


def worker_sample(job):
    """job = (seed, target_len) -> (ids int32: prompt + answer + EOS, the
    answer's first index, the answer's length). At most target_len ids."""
    seed, target_len = job
    sp, builder = _worker["sp"], _worker["builder"]
    rng = random.Random(seed)
    key = random_key(rng)
    _, ids, _ = builder.build(target_len, key, rng)
    answer = answer_ids(sp.encode, key)
    row = np.array(ids + answer + [sp.eos_id()], dtype=np.int32)
    assert len(row) <= target_len
    return row, len(ids), len(answer)


# ================================================ a worked example for C

class _Fixed:
    """A stand-in for random.Random that returns given draws in order."""

    def __init__(self, draws):
        self.draws = list(draws)

    def randrange(self, n):
        v = self.draws.pop(0)
        assert 0 <= v < n
        return v

    def randint(self, lo, hi):
        v = self.draws.pop(0)
        assert lo <= v <= hi
        return v


def example(tokenizer_path, filler_path, target_len=256, start=100, depth=1, key=12345):
    """The prompt for fixed draws (start sentence, depth j, key): a test
    vector for the C implementation (tools/passkey_example.json)."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    with open(filler_path, encoding="utf-8") as f:
        sentences = filler_sentences(f.read())
    b = PromptBuilder(sentences, sp.encode, sp.bos_id())
    prompt, ids, frac = b.build(target_len, key, _Fixed([start, depth]))
    n = round(depth / frac)
    return {"filler": os.path.basename(filler_path), "filler_sentences": len(sentences),
            "target_len": target_len, "start_sentence": start, "sentences": n, "depth_j": depth,
            "key": key, "prompt": prompt, "n_tokens": len(ids), "ids": ids,
            "answer_ids": answer_ids(sp.encode, key)}


# (target_len, start sentence, depth j, key): the second wraps around the
# end of the filler.
EXAMPLES = ((256, 100, 1, 12345), (1024, 3110, 5, 90210))


if __name__ == "__main__":
    import json
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tools", "passkey_example.json")
    exs = [example(os.path.join(root, "models", "tokenizer.model"), os.path.join(root, "models", "heldout.txt"),
                   *e) for e in EXAMPLES]
    with open(out, "w", encoding="utf-8") as f:
        json.dump(exs, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for ex in exs:
        print(f"{ex['target_len']}: {ex['n_tokens']} tokens, {ex['sentences']} sentences")
    print(f"wrote {out}")
