#!/bin/bash
# One device call (bench/gpu/README in docs/perf/gpu.md): GPU parity on the tiny fixtures,
# MPNet-base benchmark (embedrt fp32/fp16 and the PyTorch fp16 peer, same weights and ids),
# and the CLI path (build, info, embed --plan, corrupt-plan error). Builds nothing: the
# binaries come prebuilt (x86-64) in .gpu/. Logs under $OUT; a table at the end.
set -uo pipefail
G=.gpu
O=${OUT:-/tmp/out}
mkdir -p "$O"
export EMBEDRT_KERNEL_CACHE=/tmp/embedrt-kernels
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$O/gpu.txt"
: > "$O/parity.jsonl"
for f in tests/fixtures/tiny-*/; do
  timeout 120 $G/embedrt-gpu-check parity "$f" 2>&1 | tee -a "$O/parity.jsonl"
done
echo "== all-MiniLM-L6-v2 (fp16-rounded weights carried) + STS-B dev"
[ -d $G/minilm ] && timeout 200 $G/embedrt-gpu-check parity $G/minilm $G/stsb-en-dev.csv 2>&1 | tee "$O/minilm.jsonl"
echo "== CLI"
{
  $G/embedrt build --model tests/fixtures/tiny-mpnet-mean-norm --device cuda:0 --precision fp16 \
    --profile 1x8:16x64:64x128 -o /tmp/tiny.plan
  $G/embedrt info --plan /tmp/tiny.plan
  printf '{"text":"a plan on the GPU"}\n{"text":"second line"}\n' > /tmp/in.jsonl
  $G/embedrt embed --plan /tmp/tiny.plan --input /tmp/in.jsonl | cut -c1-120
  $G/embedrt embed --model tests/fixtures/tiny-mpnet-mean-norm --device cuda --input /tmp/in.jsonl | cut -c1-120
  $G/embedrt embed --model tests/fixtures/tiny-mpnet-mean-norm --device cuda:7 --input /tmp/in.jsonl
  head -c 5000 /tmp/tiny.plan > /tmp/trunc.plan; $G/embedrt embed --plan /tmp/trunc.plan --input /tmp/in.jsonl
  cp /tmp/tiny.plan /tmp/bad.plan; printf '\x01' | dd of=/tmp/bad.plan bs=1 seek=9000 conv=notrunc 2>/dev/null
  $G/embedrt embed --plan /tmp/bad.plan --input /tmp/in.jsonl
  $G/embedrt-gpu-check assemble-plan tests/fixtures/tiny-mpnet-mean-norm /tmp/sm80.plan 8.0
  $G/embedrt embed --plan /tmp/sm80.plan --input /tmp/in.jsonl
} 2>&1 | tee "$O/cli.txt"
echo "== MPNet-base"
timeout 200 python3 $G/make_mpnet.py /tmp/mpnet $G/tokenizer.json 2>&1 | tail -1
timeout 300 $G/embedrt-gpu-check bench /tmp/mpnet $G/stsb-en-dev.csv /tmp/plans 2>&1 | tee "$O/ours.jsonl"
timeout 200 python3 $G/peer_torch.py /tmp/mpnet $G/stsb-en-dev.csv 2>&1 | tee "$O/peer.jsonl"
python3 $G/summarize.py "$O"
