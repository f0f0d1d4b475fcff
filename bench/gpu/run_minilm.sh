#!/bin/bash
# Second device call: all-MiniLM-L6-v2 (carried as fp16 safetensors) parity and STS-B dev
# Spearman: CPU engine vs GPU fp32 vs GPU fp16, batch composition. Logs under $OUT.
set -uo pipefail
G=.gpu
O=${OUT:-/tmp/out}
mkdir -p "$O"
export EMBEDRT_KERNEL_CACHE=/tmp/embedrt-kernels
timeout 300 $G/embedrt-gpu-check parity $G/minilm $G/stsb-en-dev.csv 2>&1 | tee "$O/minilm.jsonl"
python3 $G/summarize.py "$O"
