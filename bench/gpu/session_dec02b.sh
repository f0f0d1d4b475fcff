#!/bin/bash
# The second 2026-12-02 session's device calls, one script (30 device minutes):
#   PART=pipeline: issue 13's H200 run, `embedrt pipeline run` on the real MiniLM
#                  (bench/gpu/pipeline_minilm.sh; carry .gpu and .whl: datasets, dill,
#                  multiprocess, which the device's Python lacks);
#   PART=engine:   issue 14: parity with early launch (programmatic dependent launch) on and
#                  off, W1/W2/W3 for both (fp16_variants.sh), then issue 11's check of the
#                  fp16-output fp8 plan without 32-bit accumulators (info, nvidia-smi while
#                  serving, cosine and speed).
# Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh).
set -uo pipefail
O=${OUT:-/tmp/out}; mkdir -p "$O"
(cd .gpu && gunzip -f embedrt.gz embedrt-gpu-check.gz 2>/dev/null; chmod +x embedrt embedrt-gpu-check)
export EMBEDRT_KERNEL_CACHE=/tmp/embedrt-kernels PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw --format=csv,noheader > "$O/gpu.txt"
case "${PART:-pipeline}" in
pipeline)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
  OUT=$O timeout 560 bash bench/gpu/pipeline_minilm.sh
  ;;
engine)
  echo "== parity, early launch on (default) and off"
  for label in default early-launch-off; do
    OUT=$O ONLY=$label timeout 100 bash bench/gpu/engine_options_check.sh 2>&1 | grep -E "^(ok|FAIL)"
  done
  echo "== fp16 MPNet-base, early launch on and off"
  OUT=$O/variants VARIANTS="default EMBEDRT_EARLY_LAUNCH=0" timeout 200 \
    bash bench/gpu/fp16_variants.sh > "$O/variants.log" 2>&1
  tail -4 "$O/variants.log"
  echo "== fp8 plan, fp16 GEMM output (default on sm_90): memory without accumulators"
  E=.gpu/embedrt; C=.gpu/embedrt-gpu-check; STS=.gpu/stsb-en-dev.csv; D=/tmp/mpnet
  P=1x8:256x128:1024x512
  timeout 100 $E calibrate --model $D --input "$STS" --precision fp8 --calibration-size 512 \
    --no-fallback -o /tmp/fp8.table.json > "$O/calibrate.log" 2>&1 || tail -2 "$O/calibrate.log"
  timeout 60 $E build --model $D --precision fp32 --profile $P -o /tmp/fp32.plan > "$O/b32.log" 2>&1
  timeout 100 $E build --model $D --precision fp8 --profile $P --max-batch-tokens 32768 \
    --calibration-table /tmp/fp8.table.json -o /tmp/fp8.plan > "$O/b8.log" 2>&1 || tail -2 "$O/b8.log"
  $E info --plan /tmp/fp8.plan > "$O/fp8_info.txt" 2>&1
  grep -iE "precision|gemm output|memory|slot|workspace" "$O/fp8_info.txt" | head -10
  $E serve --plan /tmp/fp8.plan --port 18500 > "$O/serve_fp8.log" 2>&1 &
  S=$!
  for _ in $(seq 300); do curl -sf localhost:18500/ready > /dev/null && break; sleep 0.2; done
  curl -sf localhost:18500/embed -H 'content-type: application/json' \
    -d '{"inputs": ["a warm-up sentence"]}' > /dev/null
  echo "serve fp8 plan, nvidia-smi MiB: $(nvidia-smi --query-compute-apps=used_memory --format=csv,noheader,nounits | paste -sd+)"
  kill $S; wait $S 2>/dev/null
  echo "fp8 plan: $(timeout 120 $C bench-plan $D "$STS" /tmp/fp8.plan /tmp/fp32.plan 2>&1 | tail -1 \
    | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print({k: d[k] for k in ("cos_vs_reference_mean","cos_vs_reference_min","w1_seq_per_s","w2_sent_per_s","w3_p50_ms")})')"
  ;;
esac
