#!/bin/bash
# Fills the folder the device tool carries (default /work/main/.gpu, git-ignored there) with
# what bench/gpu/run_all.sh and run_cli.sh need: stripped release binaries, the scripts, the
# STS-B dev CSV, MiniLM's tokenizer and MiniLM as fp16 safetensors (under the 64 MiB limit).
# Run it from the checkout whose binaries should travel (a helper's worktree too).
# usage: bench/gpu/prepare_carry.sh [DEST] [MINILM_DIR] [STSB_DEV_CSV]
set -euo pipefail
DEST=${1:-/work/main/.gpu}
MINILM=${2:-.cache/all-MiniLM-L6-v2}
STSB=${3:-../shared/data/stsb/stsb-en-dev.csv}
PY=${PYTHON:-python3}
cargo build --release -p embedrt -p embedrt-cuda
mkdir -p "$DEST"
# Gzipped: the carried folder plus the checkout must stay under 64 MiB; the device command
# starts with `gunzip -f .gpu/*.gz && chmod +x .gpu/embedrt .gpu/embedrt-gpu-check`.
strip -o "$DEST/embedrt" target/release/embedrt
strip -o "$DEST/embedrt-gpu-check" target/release/embedrt-gpu-check
gzip -9 -f "$DEST/embedrt" "$DEST/embedrt-gpu-check"
cp bench/gpu/make_mpnet.py bench/gpu/peer_torch.py bench/gpu/summarize.py bench/gpu/run_*.sh "$DEST/"
# The data and the fp16 MiniLM do not change between runs: made once.
[ -f "$DEST/stsb-en-dev.csv" ] || cp "$STSB" "$DEST/"
[ -f "$DEST/tokenizer.json" ] || cp "$MINILM/tokenizer.json" "$DEST/"
[ -f "$DEST/minilm/model.safetensors" ] || $PY bench/gpu/minilm_fp16.py "$MINILM" "$DEST/minilm"
du -sh "$DEST"
