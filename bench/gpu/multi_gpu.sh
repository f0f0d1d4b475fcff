#!/bin/bash
# Two-GPU throughput and failover (issue 7): W1 and W2 of the GPU benchmark through the server's queue and
# engine pool, first on cuda:0 alone, then on cuda:0,1; then the same through `embedrt serve`
# over HTTP with the load client. Needs a machine with >= 2 GPUs (device kind nvidia-h200-x2).
# Builds nothing: binaries prebuilt (x86-64) in .gpu/ (bench/gpu/prepare_carry.sh, plus
#   cargo build --release -p embedrt-server --example pool_bench
#   strip -o .gpu/pool_bench target/release/examples/pool_bench
# and bench/load/load_client.py copied there). Logs under $OUT; pass = ratio >= 1.8 on W1 and W2.
set -uo pipefail
G=.gpu
O=${OUT:-/tmp/out}
mkdir -p "$O"
export EMBEDRT_KERNEL_CACHE=/tmp/embedrt-kernels
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | tee "$O/gpus.txt"
timeout 200 python3 $G/make_mpnet.py /tmp/mpnet $G/tokenizer.json 2>&1 | tail -1
for d in cuda:0 cuda:0,1; do
  timeout 280 $G/pool_bench /tmp/mpnet $G/stsb-en-dev.csv "$d" fp16 2>&1 | tee -a "$O/pool.jsonl"
done
# Failover with real CUDA engines: cuda:0 behind a fault injector fails from its 5th batch on;
# W1 must complete (exit 0, every job answered) with cuda:0 out of rotation ("healthy": 1).
timeout 200 $G/pool_bench /tmp/mpnet $G/stsb-en-dev.csv cuda:0,1 fp16 failover 2>&1 | tee "$O/failover.jsonl"
echo "failover exit: ${PIPESTATUS[0]}" | tee -a "$O/failover.jsonl"
python3 - "$O/pool.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for w in ("W1", "W2"):
    one = [r for r in rows if r["workload"] == w and len(r["devices"]) == 1]
    two = [r for r in rows if r["workload"] == w and len(r["devices"]) == 2]
    if one and two:
        a, b = one[-1]["sequences_per_second"], two[-1]["sequences_per_second"]
        print(f"{w}: 1 GPU {a:,.0f}/s, 2 GPUs {b:,.0f}/s, ratio {b / a:.2f} (target >= 1.8)")
PY
# End to end: the same model served on one and on two GPUs, 64 clients of 32 sentences each.
for d in cuda:0 cuda:0,1; do
  $G/embedrt serve --model /tmp/mpnet --device "$d" --precision fp16 --port 18080 \
    --max-concurrent-requests 4096 >"$O/serve-$d.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do curl -sf localhost:18080/ready >/dev/null && break; sleep 0.2; done
  timeout 120 python3 $G/load_client.py --url http://127.0.0.1:18080 --input $G/stsb-en-dev.csv \
    --concurrency 64 --batch 32 --duration 20 --processes 8 2>&1 | tee -a "$O/http-$d.jsonl"
  curl -s localhost:18080/metrics | grep -E '^embedrt_device_' >>"$O/http-$d.jsonl"
  kill "$pid"; wait "$pid"
done
