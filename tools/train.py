"""train.py: trains llmd's default model, evaluates it and exports the GGUF.

    train.py --out DIR [--minutes 7.5] [options]     # the real run (GPU)
    train.py --tiny --out DIR                        # CPU smoke test, seconds
    train.py --eval-only DIR/model.pt --out DIR      # evaluate + export a checkpoint

The model is the plain LLaMA of tools/model.py (dim 512, 6 layers, 8 heads,
2 KV heads, SwiGLU 1280, vocab 8000, tied embeddings, context 4096). Data:
corpus/tokens/train.bin (tools/fetch_corpus.sh), random windows of it; a
fraction of the rows starts with a passkey-retrieval sample (tools/PASSKEY.md)
built from the training text by worker processes; the answer's tokens get an
extra loss term so that retrieval is learnt early. The run stops after
--minutes of training wall time (evaluations during training not counted);
the learning rate follows a linear warm-up and a cosine over that time (or
over --max-steps), and the sequence length follows --seq-schedule
(fractions of the run -> length, non-decreasing).

Writes into --out: loss.csv (step, tokens, train loss, held-out loss and a
quick passkey accuracy now and then, tokens/s), train.log, model.pt (fp32
state dict + config), model.gguf (F16, via tools/export_gguf.py) and
summary.json: parameters, tokens seen, time, losses, held-out perplexity
(non-overlapping windows, each scored on its own: tokens 1..W-1 of a window
predicted from the tokens before them in that window), passkey accuracy at
each length (full attention, greedy, tools/PASSKEY.md), samples,
hyperparameters, seed, GPU.
"""

import argparse
import contextlib
import csv
import inspect
import json
import math
import multiprocessing as mp
import os
import platform
import random
import sys
import time
from collections import deque

import numpy as np
import torch
import torch.nn.functional as F

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)
import export_gguf  # noqa: E402
import passkey  # noqa: E402
from model import Llama, LlamaConfig, count_parameters, load_checkpoint, save_checkpoint  # noqa: E402

REAL_CONFIG = LlamaConfig(dim=512, n_layers=6, n_heads=8, n_kv_heads=2, head_dim=64, ffn_dim=1280,
                          vocab_size=8000, ctx_len=4096, rope_base=10000.0, norm_eps=1e-5, tied=True)
TINY_CONFIG = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=128,
                          vocab_size=8000, ctx_len=256, rope_base=10000.0, norm_eps=1e-5, tied=True)
TINY_DEFAULTS = dict(max_steps=30, batch_tokens=4096, micro_batch_tokens=2048, lr=3e-3, warmup_steps=5,
                     dropout=0.0, seq_schedule="0:192,0.5:256", passkey_min_len=192, passkey_workers=1,
                     passkey_lengths="192,256", passkey_trials=6, ppl_windows="128,256", ppl_max_tokens=8192, eval_every_s=10.0,
                     eval_tokens=2048, eval_passkey_trials=4, log_every=5, name="llmd-tiny",
                     sample_tokens=16)
SAMPLE_PROMPTS = ("It is a truth universally acknowledged", "And it came to pass",
                  "The President of the United States", "She looked at him and said")
CSV_FIELDS = ["step", "tokens", "train_s", "seq_len", "lr", "train_loss", "answer_loss", "tok_per_s",
              "heldout_loss", "passkey_len", "passkey_acc"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--tokens", default=os.path.join(ROOT, "corpus", "tokens"))
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "models", "tokenizer.model"))
    ap.add_argument("--heldout-text", default=os.path.join(ROOT, "models", "heldout.txt"))
    ap.add_argument("--name", default="llmd-20m", help="general.name of the GGUF")
    ap.add_argument("--tiny", action="store_true", help="tiny model and settings for a CPU smoke test")
    ap.add_argument("--eval-only", metavar="CKPT", help="evaluate and export a checkpoint, no training")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--device", default=None, help="default: cuda if available")
    ap.add_argument("--seed", type=int, default=1234)
    # budget and optimisation
    ap.add_argument("--minutes", type=float, default=7.5, help="training wall time")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps instead (0: time)")
    ap.add_argument("--batch-tokens", type=int, default=131072, help="tokens per optimizer step")
    ap.add_argument("--micro-batch-tokens", type=int, default=65536, help="tokens per forward/backward")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup-steps", type=int, default=150)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--seq-schedule", default="0:1024,0.25:4096",
                    help="fraction of the run:sequence length, ... (non-decreasing)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    # passkey
    ap.add_argument("--passkey-frac", type=float, default=0.3, help="fraction of rows that are passkey samples")
    ap.add_argument("--passkey-min-len", type=int, default=256)
    ap.add_argument("--passkey-answer-weight", type=float, default=1.0,
                    help="weight of the extra loss on the answer tokens")
    ap.add_argument("--passkey-workers", type=int, default=6, help="sample-making processes (0: inline)")
    # evaluation
    ap.add_argument("--passkey-lengths", default="1024,2048,4096")
    ap.add_argument("--passkey-trials", type=int, default=50)
    ap.add_argument("--ppl-windows", default="1024,4096")
    ap.add_argument("--ppl-max-tokens", type=int, default=0, help="perplexity on the first N tokens (0: all)")
    ap.add_argument("--eval-every-s", type=float, default=45.0, help="training seconds between quick evals")
    ap.add_argument("--eval-tokens", type=int, default=65536, help="held-out tokens of a quick eval")
    ap.add_argument("--eval-passkey-trials", type=int, default=20)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--sample-tokens", type=int, default=64)
    argv = sys.argv[1:] if argv is None else argv
    if "--tiny" in argv:
        ap.set_defaults(**TINY_DEFAULTS)
    a = ap.parse_args(argv)
    a.passkey_lengths = [int(x) for x in a.passkey_lengths.split(",")]
    a.ppl_windows = [int(x) for x in a.ppl_windows.split(",")]
    a.seq_schedule = parse_schedule(a.seq_schedule)
    return a


def parse_schedule(text):
    sched = sorted((float(f), int(n)) for f, n in (x.split(":") for x in text.split(",")))
    assert sched[0][0] == 0.0, "the schedule must start at 0"
    assert all(a[1] <= b[1] for a, b in zip(sched, sched[1:])), "sequence lengths must not decrease"
    return sched


def seq_len_at(sched, progress):
    return [n for f, n in sched if f <= progress][-1]


def lr_at(a, step, progress):
    warm = min(1.0, (step + 1) / max(1, a.warmup_steps))
    cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return a.lr * warm * (a.min_lr_ratio + (1.0 - a.min_lr_ratio) * cos)


class Log:
    """Prints and appends to train.log, flushed at once."""

    def __init__(self, path):
        self.f = open(path, "a", buffering=1)

    def __call__(self, msg):
        print(msg, flush=True)
        self.f.write(msg + "\n")


# ============================================================ data

def read_tokens(path):
    return np.fromfile(path, dtype="<u2").astype(np.int64)


class PasskeyFeed:
    """Passkey training samples made by worker processes, handed out in the
    order asked for (so a run is reproducible for a given seed)."""

    def __init__(self, a, seed):
        self.rng = random.Random(seed)
        self.min_len = a.passkey_min_len
        self.pending = deque()
        self.wait_s = 0.0
        init = (os.path.join(a.tokens, "train.bin"), a.tokenizer)
        if a.passkey_workers > 0:
            ctx = mp.get_context("spawn")
            self.pool = ctx.Pool(a.passkey_workers, initializer=passkey.worker_init, initargs=init)
        else:
            self.pool = None
            passkey.worker_init(*init)

    def request(self, max_len):
        job = (self.rng.getrandbits(63), self.rng.randint(min(self.min_len, max_len), max_len))
        if self.pool is None:
            self.pending.append(passkey.worker_sample(job))
        else:
            self.pending.append(self.pool.apply_async(passkey.worker_sample, (job,)))

    def ensure(self, n, max_len):
        while len(self.pending) < n:
            self.request(max_len)

    def get(self):
        item = self.pending.popleft()
        if self.pool is None:
            return item
        t = time.time()
        out = item.get()
        self.wait_s += time.time() - t
        return out

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def make_rows(train, rows, seq_len, n_passkey, rng, feed):
    """(rows, seq_len + 1) token rows: random windows of the training
    stream; the first n_passkey rows begin with a passkey sample (the
    window's tail fills the rest). Also the answer mask over the targets."""
    x = np.empty((rows, seq_len + 1), dtype=np.int64)
    starts = rng.integers(0, len(train) - seq_len - 1, size=rows)
    for r, s in enumerate(starts):
        x[r] = train[s:s + seq_len + 1]
    mask = np.zeros((rows, seq_len), dtype=np.float32)
    for r in range(n_passkey):
        sample, a0, alen = feed.get()
        assert len(sample) <= seq_len + 1
        x[r, :len(sample)] = sample
        mask[r, a0 - 1:a0 - 1 + alen] = 1.0  # target i predicts token i + 1
    return x, mask


def to_device(arr, device):
    t = torch.from_numpy(arr)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# ====================================================== evaluation

def autocast_for(device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def eval_nll(model, tokens, window, device, max_tokens=None, batch_tokens=65536):
    """Mean NLL over non-overlapping windows of `window` tokens (full windows
    only), each window on its own. Returns (mean nll, tokens scored)."""
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens)
    n_win = n // window
    assert n_win > 0, f"fewer than {window} tokens to evaluate"
    per = max(1, batch_tokens // window)
    total, count = 0.0, 0
    for i in range(0, n_win, per):
        b = min(per, n_win - i)
        x = torch.from_numpy(tokens[i * window:(i + b) * window]).view(b, window).to(device)
        with autocast_for(device):
            logits = model(x[:, :-1])
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        total += float(nll)
        count += b * (window - 1)
    return total / count, count


@torch.no_grad()
def greedy_continue(model, prompts, n_new, device, batch=16):
    """Greedy continuation of each id list by n_new tokens, full attention,
    no KV cache (the whole prefix is recomputed each token)."""
    outs = []
    for c in range(0, len(prompts), batch):
        chunk = prompts[c:c + batch]
        lens = [len(p) for p in chunk]
        buf = torch.zeros(len(chunk), max(lens) + n_new, dtype=torch.long, device=device)
        for b, p in enumerate(chunk):
            buf[b, :len(p)] = torch.tensor(p)
        gen = [[] for _ in chunk]
        rows = torch.arange(len(chunk), device=device)
        for _ in range(n_new):
            with autocast_for(device):
                h = model.hidden(buf[:, :max(lens)])
            last = h[rows, torch.tensor(lens, device=device) - 1]
            nxt = model.logits(last.float()).argmax(-1).tolist()
            for b, t in enumerate(nxt):
                buf[b, lens[b]] = t
                gen[b].append(t)
                lens[b] += 1
        outs += gen
    return outs


def eval_passkey(model, builder, sp, target_len, trials, seed, device):
    """tools/PASSKEY.md: accuracy over `trials` prompts of target_len."""
    rng = random.Random(seed * 1_000_003 + target_len)
    cases = []
    for _ in range(trials):
        key = passkey.random_key(rng)
        _, ids, depth = builder.build(target_len, key, rng)
        cases.append((key, ids, depth))
    gens = greedy_continue(model, [ids for _, ids, _ in cases], passkey.ANSWER_BUDGET, device)
    right, failures = 0, []
    for (key, ids, depth), gen in zip(cases, gens):
        if sp.eos_id() in gen:
            gen = gen[:gen.index(sp.eos_id())]
        text = sp.decode(gen)
        if passkey.check_answer(text, key):
            right += 1
        elif len(failures) < 5:
            failures.append({"key": key, "depth": round(depth, 3), "generated": text})
    return {"accuracy": right / trials, "trials": trials,
            "mean_prompt_tokens": float(np.mean([len(ids) for _, ids, _ in cases])),
            "failures": failures}


@torch.no_grad()
def sample_text(model, sp, prompt, n_new, device, temperature, generator):
    ids = [sp.bos_id()] + sp.encode(prompt)
    new = []
    for _ in range(n_new):
        with autocast_for(device):
            h = model.hidden(torch.tensor([ids + new], device=device))
        logits = model.logits(h[0, -1].float())
        if temperature == 0:
            t = int(logits.argmax())
        else:
            probs = torch.softmax(logits / temperature, -1).cpu()
            t = int(torch.multinomial(probs, 1, generator=generator))
        if t == sp.eos_id():
            break
        new.append(t)
    return sp.decode(sp.encode(prompt) + new)


def evaluate(model, a, sp, device, log):
    """Final figures: held-out and calibration perplexity, passkey accuracy,
    samples."""
    model.eval()
    res = {"heldout": {}, "calibration": {}, "passkey_accuracy": {}}
    for split in ("heldout", "calibration"):
        toks = read_tokens(os.path.join(a.tokens, f"{split}.bin"))
        for w in a.ppl_windows:
            nll, n = eval_nll(model, toks, w, device, a.ppl_max_tokens or None)
            res[split][str(w)] = {"loss": nll, "perplexity": math.exp(nll), "tokens_scored": n, "window": w}
            log(f"{split} window {w}: loss {nll:.4f} perplexity {math.exp(nll):.2f} ({n} tokens)")
    with open(a.heldout_text, encoding="utf-8") as f:
        builder = passkey.PromptBuilder(passkey.filler_sentences(f.read()), sp.encode, sp.bos_id())
    for n in a.passkey_lengths:
        t = time.time()
        r = eval_passkey(model, builder, sp, n, a.passkey_trials, a.seed, device)
        res["passkey_accuracy"][str(n)] = r
        log(f"passkey {n}: {r['accuracy']:.3f} of {r['trials']} ({time.time() - t:.1f} s)"
            + (f"; e.g. {r['failures'][0]}" if r["failures"] else ""))
    g = torch.Generator().manual_seed(a.seed)
    res["samples"] = []
    for p in SAMPLE_PROMPTS:
        for temp in (0.0, 0.8):
            text = sample_text(model, sp, p, a.sample_tokens, device, temp, g)
            res["samples"].append({"prompt": p, "temperature": temp, "text": text})
            log(f"sample (T={temp}): {text!r}")
    return res


# ========================================================== training

def build_optimizer(model, a, device):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=a.lr, betas=(0.9, a.beta2), eps=1e-8)
    if device.type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        kw["fused"] = True
    return torch.optim.AdamW(groups, **kw)


def train(model, a, device, log, csv_writer):
    train_tokens = read_tokens(os.path.join(a.tokens, "train.bin"))
    heldout_tokens = read_tokens(os.path.join(a.tokens, "heldout.bin"))
    sp = load_sp(a.tokenizer)
    with open(a.heldout_text, encoding="utf-8") as f:
        eval_builder = passkey.PromptBuilder(passkey.filler_sentences(f.read()), sp.encode, sp.bos_id())
    log(f"train tokens {len(train_tokens)}, held-out tokens {len(heldout_tokens)}")
    feed = PasskeyFeed(a, a.seed + 1)
    rng = np.random.default_rng(a.seed + 2)
    opt = build_optimizer(model, a, device)
    fwd = model
    if a.compile and hasattr(torch, "compile"):
        fwd = torch.compile(model)
    model.train()
    budget_s = a.minutes * 60.0
    step, tokens_seen, passkey_rows = 0, 0, 0
    eval_s, last_eval = 0.0, 0.0
    t0 = time.time()
    last_log_t, last_log_tokens = t0, 0
    acc_lm = torch.zeros((), device=device)
    acc_ans = torch.zeros((), device=device)
    acc_n, acc_ans_n = 0, 0
    final_train_loss = float("nan")
    while True:
        train_s = time.time() - t0 - eval_s
        progress = step / a.max_steps if a.max_steps else train_s / budget_s
        if progress >= 1.0:
            break
        seq_len = seq_len_at(a.seq_schedule, progress)
        micro_rows = max(1, a.micro_batch_tokens // seq_len)
        n_micro = max(1, a.batch_tokens // (micro_rows * seq_len))
        n_pk = rng.binomial(micro_rows, a.passkey_frac, size=n_micro)
        feed.ensure(int(n_pk.sum()) + 2 * micro_rows, seq_len)
        lr = lr_at(a, step, progress)
        for group in opt.param_groups:
            group["lr"] = lr
        for m in range(n_micro):
            x, mask = make_rows(train_tokens, micro_rows, seq_len, int(n_pk[m]), rng, feed)
            x, mask = to_device(x, device), to_device(mask, device)
            with autocast_for(device):
                logits = fwd(x[:, :-1])
            ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                 reduction="none")
            lm = ce.mean()
            n_ans = mask.sum()
            ans = (ce * mask.reshape(-1)).sum() / n_ans.clamp(min=1.0)
            ((lm + a.passkey_answer_weight * ans) / n_micro).backward()
            acc_lm += lm.detach()
            acc_n += 1
            if n_pk[m]:
                acc_ans += ans.detach()
                acc_ans_n += 1
            tokens_seen += micro_rows * seq_len
            passkey_rows += int(n_pk[m])
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1

        now = time.time()
        do_eval = (now - t0 - eval_s) - last_eval >= a.eval_every_s
        if step in (1, 3) or step % a.log_every == 0 or do_eval:
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.time()
            tok_s = (tokens_seen - last_log_tokens) / max(1e-9, now - last_log_t)
            final_train_loss = float(acc_lm) / max(1, acc_n)
            row = {"step": step, "tokens": tokens_seen, "train_s": round(now - t0 - eval_s, 2),
                   "seq_len": seq_len, "lr": f"{lr:.3e}", "train_loss": f"{final_train_loss:.4f}",
                   "answer_loss": f"{float(acc_ans) / acc_ans_n:.4f}" if acc_ans_n else "",
                   "tok_per_s": round(tok_s)}
            if do_eval:
                te = time.time()
                model.eval()
                w = min(1024, seq_len)
                nll, _ = eval_nll(model, heldout_tokens, w, device, a.eval_tokens)
                pk = eval_passkey(model, eval_builder, sp, seq_len, a.eval_passkey_trials, a.seed + step, device)
                model.train()
                row.update(heldout_loss=f"{nll:.4f}", passkey_len=seq_len, passkey_acc=pk["accuracy"])
                eval_s += time.time() - te
                last_eval = time.time() - t0 - eval_s
            csv_writer(row)
            log(" ".join(f"{k}={v}" for k, v in row.items() if v != "")
                + f" passkey_wait_s={feed.wait_s:.1f}")
            acc_lm.zero_()
            acc_ans.zero_()
            acc_n = acc_ans_n = 0
            last_log_t, last_log_tokens = time.time(), tokens_seen
    if device.type == "cuda":
        torch.cuda.synchronize()
    if acc_n:
        final_train_loss = float(acc_lm) / acc_n
    train_s = time.time() - t0 - eval_s
    feed.close()
    return {"steps": step, "tokens_seen": tokens_seen, "passkey_rows": passkey_rows, "train_time_s": train_s,
            "eval_time_during_training_s": eval_s, "tokens_per_s": tokens_seen / max(1e-9, train_s),
            "epochs": tokens_seen / len(train_tokens), "final_train_loss": final_train_loss,
            "passkey_wait_s": feed.wait_s}


def load_sp(path):
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=path)


def environment(device):
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def main(argv=None):
    a = parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    log = Log(os.path.join(a.out, "train.log"))
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t_start = time.time()
    env = environment(device)
    log(f"environment: {env}")
    sp = load_sp(a.tokenizer)
    result = {"name": a.name, "environment": env, "seed": a.seed}
    training = {}
    if a.eval_only:
        model, ck = load_checkpoint(a.eval_only, device)
        training = ck.get("training", {})
    else:
        cfg = TINY_CONFIG if a.tiny else REAL_CONFIG
        cfg = LlamaConfig(**{**cfg.__dict__, "dropout": a.dropout})
        model = Llama(cfg)
        model.init_weights(torch.Generator().manual_seed(a.seed))
        model.to(device)
        log(f"model {cfg}: {count_parameters(model)} parameters")
        csv_path = os.path.join(a.out, "loss.csv")
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()

            def write_row(row):
                w.writerow(row)
                f.flush()
            training = train(model, a, device, log, write_row)
        log(f"training: {training}")
    model.eval()
    result["parameters"] = count_parameters(model)
    result["config"] = dict(model.c.__dict__)
    result["hyperparameters"] = {k: v for k, v in vars(a).items() if k not in ("out",)}
    result.update(training)
    result.update(evaluate(model, a, sp, device, log))
    save_checkpoint(os.path.join(a.out, "model.pt"), model, {"training": training})
    if not a.no_export:
        path = os.path.join(a.out, "model.gguf")
        size = export_gguf.export_model(model, path, a.tokenizer, a.name)
        result["gguf"] = {"file": "model.gguf", "bytes": size, "MiB": size / 2 ** 20}
        log(f"wrote {path}: {size / 2 ** 20:.2f} MiB")
    result["total_time_s"] = time.time() - t_start
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    log(f"done in {result['total_time_s']:.1f} s")


if __name__ == "__main__":
    main()
