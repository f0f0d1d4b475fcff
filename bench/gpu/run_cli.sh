#!/bin/bash
# Device call for the CLI on a real model: `embedrt build` (fp16 and fp32 plans of MiniLM),
# `info`, `eval --plan` / `bench --plan` against the CPU engine's eval, `--device auto` picking
# the GPU, and the out-of-memory error at load. Logs under $OUT.
set -uo pipefail
G=.gpu
O=${OUT:-/tmp/out}
mkdir -p "$O"
export EMBEDRT_KERNEL_CACHE=/tmp/embedrt-kernels
{
  for p in fp16 fp32; do
    $G/embedrt build --model $G/minilm --device cuda --precision $p --profile 1x8:64x64:256x256 -o /tmp/minilm-$p.plan
  done
  $G/embedrt info --plan /tmp/minilm-fp16.plan
  $G/embedrt info --plan /tmp/minilm-fp32.plan | grep bytes
  echo "eval --plan fp16:"; $G/embedrt eval --plan /tmp/minilm-fp16.plan --sts $G/stsb-en-dev.csv
  echo "eval --plan fp32:"; $G/embedrt eval --plan /tmp/minilm-fp32.plan --sts $G/stsb-en-dev.csv
  echo "eval --device cpu:"; $G/embedrt eval --model $G/minilm --device cpu --sts $G/stsb-en-dev.csv
  echo "eval --device auto (GPU, in-memory plan):"; $G/embedrt eval --model $G/minilm --sts $G/stsb-en-dev.csv
  echo "bench --plan fp16:"; $G/embedrt bench --plan /tmp/minilm-fp16.plan --input $G/stsb-en-dev.csv --batch-size 256 --repeat 5
  echo "bench --plan fp32:"; $G/embedrt bench --plan /tmp/minilm-fp32.plan --input $G/stsb-en-dev.csv --batch-size 256 --repeat 5
  echo "bench --device cpu:"; $G/embedrt bench --model $G/minilm --device cpu --input $G/stsb-en-dev.csv --batch-size 64
  echo "out of memory at load:"
  $G/embedrt build --model tests/fixtures/tiny-mpnet-mean-norm --profile 1x8:64x128:20000000x128 -o /tmp/huge.plan
  echo "exit $?"
} 2>&1 | tee "$O/cli2.txt"
