#!/bin/bash
# Issue 14 item 1 on the H200: GPU memory of `embedrt serve --plan` (whole process, nvidia-smi)
# for an fp16 MPNet-base plan with a token budget of 16384 (the default then) and 32768 (now), and
# `embedrt bench` (W2: the 3,000 STS-B dev sentences through the Embedder) on each.
set -uo pipefail
G=.gpu; E=$G/embedrt; STS=$G/stsb-en-dev.csv
cd $G && gunzip -f embedrt.gz embedrt-gpu-check.gz 2>/dev/null; chmod +x embedrt embedrt-gpu-check; cd ..
export EMBEDRT_KERNEL_CACHE=/tmp/embedrt-kernels
[ -d /tmp/mpnet ] || python3 $G/make_mpnet.py /tmp/mpnet $G/tokenizer.json > /dev/null 2>&1
for budget in 16384 32768; do
  p=/tmp/mpnet-$budget.plan
  $E build --model /tmp/mpnet --precision fp16 --profile 1x8:256x128:1024x512 --max-batch-tokens $budget -o $p > /tmp/b.json 2>&1 || { tail -2 /tmp/b.json; continue; }
  $E info --plan $p | grep -E "batch limits|workspace|device memory"
  $E serve --plan $p --port 8090 > /tmp/serve.log 2>&1 & pid=$!
  for i in $(seq 60); do curl -sf localhost:8090/ready > /dev/null && break; sleep 1; done
  echo "budget $budget: serve GPU memory $(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader | tr '\n' ' ')"
  kill $pid; wait $pid 2>/dev/null
  $E bench --plan $p --input "$STS" --batch-size 256 --repeat 5 2>/dev/null | tail -1
done
