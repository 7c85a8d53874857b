#!/usr/bin/env bash
# device_run.sh: everything the GPU machine runs, in one script.
#
#   tools/device_run.sh smoke            # ~3 minutes: versions, checks, a 60 s training run
#   tools/device_run.sh train [ARGS...]  # the full run; ARGS go to tools/train.py
#
# Needs corpus/tokens/ (built by tools/fetch_corpus.sh, git-ignored: carry it)
# plus the tracked models/tokenizer.model, models/heldout.txt and
# tests/data/tiny-random.gguf. Writes into $OUT (at most 8 files of < 16 MiB):
#
# smoke: smoke.log (all output), tiny-random.logits.bin (reference logits of
#   the test fixture, for tests/data/), smoke-summary.json, smoke-loss.csv.
# train: llmd-20m.gguf.part-aa, -ab, -ac (the F16 GGUF cut with split -b 15M;
#   join with `cat llmd-20m.gguf.part-* > models/llmd-20m.gguf` and check the
#   sha256 printed in train.log), summary.json, loss.csv, train.log (all
#   output), llmd-20m.logits.bin (HF reference logits of the trained model).
#
# MINUTES (default 7) is the training wall time of `train`; with start-up,
# evaluation and export the whole command ends within about 9 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:?OUT must name the output folder}
mode=${1:-}
shift || true
failed=0

step() {  # step NAME COMMAND...: runs a step, records a failure, goes on
    local name=$1
    shift
    echo "=== $name ($(date +%T), ${SECONDS}s)"
    if "$@"; then
        echo "=== $name: ok"
    else
        echo "=== $name: FAILED ($?)"
        failed=1
    fi
}

versions() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" - <<'EOF'
import platform, numpy, sentencepiece, torch
print("python", platform.python_version(), "numpy", numpy.__version__, "sentencepiece", sentencepiece.__version__)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
try:
    import transformers
    print("transformers", transformers.__version__)
except ImportError as e:
    print("transformers MISSING", e)
EOF
}

tokenizer_matches() {  # this machine's sentencepiece gives the ids made where the corpus was built
    "$PY" - <<'EOF'
import numpy as np, sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file="models/tokenizer.model")
for name in ("heldout", "calibration"):
    want = np.fromfile(f"corpus/tokens/{name}.bin", dtype="<u2").tolist()
    got = [sp.bos_id()] + sp.encode(open(f"models/{name}.txt", encoding="utf-8").read())
    assert got == want, f"{name}: sentencepiece {spm.__version__} tokenizes differently"
    print(f"{name}: {len(got)} ids identical")
EOF
}

case "$mode" in
smoke)
    exec > >(tee "$OUT/smoke.log") 2>&1
    step versions versions
    step tokenizer tokenizer_matches
    step ref-logits-fixture "$PY" tools/ref_logits.py tests/data/tiny-random.gguf "$OUT/tiny-random.logits.bin"
    step fixture-hf-vs-numpy "$PY" tools/test_tools.py --check-logits tests/data/tiny-random.gguf \
        "$OUT/tiny-random.logits.bin"
    rm -rf /tmp/smoke
    step train-60s "$PY" tools/train.py --out /tmp/smoke --minutes 1 --eval-every-s 20 --passkey-trials 10 \
        --name llmd-smoke "$@"
    cp /tmp/smoke/summary.json "$OUT/smoke-summary.json" 2>/dev/null
    cp /tmp/smoke/loss.csv "$OUT/smoke-loss.csv" 2>/dev/null
    step export-standalone-same "$PY" tools/export_gguf.py /tmp/smoke/model.pt /tmp/smoke/again.gguf --name llmd-smoke
    step export-identical cmp /tmp/smoke/model.gguf /tmp/smoke/again.gguf
    step ref-logits-vs-model.py "$PY" tools/ref_logits.py /tmp/smoke/model.gguf /tmp/smoke/ref.bin \
        --compare-checkpoint /tmp/smoke/model.pt
    ;;
train)
    rm -rf /tmp/run
    mkdir -p /tmp/run
    exec > >(tee /tmp/run/device.log) 2>&1
    step versions versions
    step train "$PY" tools/train.py --out /tmp/run --minutes "${MINUTES:-7}" --name llmd-20m "$@"
    if [[ -f /tmp/run/model.gguf ]]; then
        split -b 15M /tmp/run/model.gguf "$OUT/llmd-20m.gguf.part-"
        echo "sha256 of llmd-20m.gguf: $(sha256sum /tmp/run/model.gguf | cut -d' ' -f1)"
        ls -l /tmp/run "$OUT"
        left=$((555 - SECONDS))  # the reference checks must end before the 600 s limit
        if ((left > 30)); then
            step ref-logits-vs-model.py timeout "$left" "$PY" tools/ref_logits.py /tmp/run/model.gguf \
                "$OUT/llmd-20m.logits.bin" --compare-checkpoint /tmp/run/model.pt
            step hf-vs-numpy timeout 30 "$PY" tools/test_tools.py --check-logits /tmp/run/model.gguf \
                "$OUT/llmd-20m.logits.bin"
        fi
    fi
    cp /tmp/run/summary.json /tmp/run/loss.csv "$OUT/"
    cp /tmp/run/device.log "$OUT/train.log"  # train.py's log lines and this script's
    ;;
*)
    echo "usage: $0 smoke|train [train.py args]" >&2
    exit 2
    ;;
esac
echo "=== done in ${SECONDS}s, $([[ $failed == 0 ]] && echo 'all steps ok' || echo 'SOME STEPS FAILED')"
exit "$failed"
