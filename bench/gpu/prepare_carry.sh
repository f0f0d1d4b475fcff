#!/bin/bash
# Fills the folder the device tool carries (default /work/main/.gpu, git-ignored there) with
# what bench/gpu/run_all.sh and run_cli.sh need: stripped release binaries, the scripts, the
# STS-B dev CSV, MiniLM's tokenizer and MiniLM as fp16 safetensors (under the 64 MiB limit).
# usage: bench/gpu/prepare_carry.sh [DEST] [MINILM_DIR] [STSB_DEV_CSV]
set -euo pipefail
DEST=${1:-/work/main/.gpu}
MINILM=${2:-.cache/all-MiniLM-L6-v2}
STSB=${3:-../shared/data/stsb/stsb-en-dev.csv}
PY=${PYTHON:-python3}
cargo build --release -p embedrt -p embedrt-cuda
mkdir -p "$DEST"
strip -o "$DEST/embedrt" target/release/embedrt
strip -o "$DEST/embedrt-gpu-check" target/release/embedrt-gpu-check
cp bench/gpu/*.py bench/gpu/*.sh "$STSB" "$MINILM/tokenizer.json" "$DEST/"
$PY bench/gpu/minilm_fp16.py "$MINILM" "$DEST/minilm"
du -sh "$DEST"
