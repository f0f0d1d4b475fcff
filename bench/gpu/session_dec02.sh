#!/bin/bash
# The 2026-12-02 device calls, one script (the session had ~16 device minutes left):
#   PART=a: engine refactor parity (default options), fp16 by default (memory, cache, W1/W2
#           vs a large workspace), attention occupancy variants (parity + W1/W2/W3);
#   PART=b: the 8-bit GEMM paths (quant_fast.sh).
# Binaries prebuilt in .gpu/ (strip + gzip of target/release, see prepare_carry.sh).
set -uo pipefail
O=${OUT:-/tmp/out}; mkdir -p "$O"
(cd .gpu && gunzip -f embedrt.gz embedrt-gpu-check.gz 2>/dev/null; chmod +x embedrt embedrt-gpu-check)
export EMBEDRT_KERNEL_CACHE=/tmp/embedrt-kernels
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw --format=csv,noheader > "$O/gpu.txt"
case "${PART:-a}" in
a)
  echo "== parity (default EngineOptions)"
  ONLY=default timeout 150 bash bench/gpu/engine_options_check.sh 2>&1 | tail -4
  echo "== fp16 by default"
  timeout 250 bash bench/gpu/default_fp16.sh > "$O/default_fp16.log" 2>&1
  tail -25 "$O/default_fp16/summary.txt" 2>/dev/null || tail -20 "$O/default_fp16.log"
  echo "== attention variants"
  OUT=$O/fp16_variants timeout 170 bash bench/gpu/fp16_variants.sh > "$O/fp16_variants.log" 2>&1
  tail -12 "$O/fp16_variants.log"
  ;;
b)
  timeout 560 bash bench/gpu/quant_fast.sh > "$O/quant_fast.log" 2>&1
  tail -30 "$O/quant_fast.log"
  ;;
c)
  # After making fp8's fp16 GEMM output the sm_90 default: a plan built with no 8-bit flag,
  # and the fp16-default memory check again with the load client fixed (it ran out of its
  # 3,000 sentences after ~3,000 in part a).
  E=.gpu/embedrt; C=.gpu/embedrt-gpu-check; STS=.gpu/stsb-en-dev.csv; D=/tmp/mpnet
  P=1x8:256x128:1024x512
  python3 .gpu/make_mpnet.py $D .gpu/tokenizer.json > /dev/null 2>&1
  $E calibrate --model $D --input "$STS" --precision fp8 --calibration-size 512 --no-fallback \
    -o /tmp/fp8.table.json > "$O/calibrate.log" 2>&1
  $E build --model $D --precision fp32 --profile $P -o /tmp/fp32.plan > "$O/b32.log" 2>&1
  $E build --model $D --precision fp8 --profile $P --calibration-table /tmp/fp8.table.json \
    -o /tmp/fp8.plan > "$O/b8.log" 2>&1; tail -1 "$O/b8.log" | cut -c1-400
  $E info --plan /tmp/fp8.plan | grep -iE "gemm|precision|device memory" | head -8
  echo "fp8 default plan: $(timeout 90 $C bench-plan $D "$STS" /tmp/fp8.plan /tmp/fp32.plan 2>&1 | tail -1 \
    | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print({k: d[k] for k in ("cos_vs_reference_mean","cos_vs_reference_min","w1_seq_per_s","w2_sent_per_s","w3_p50_ms")})')"
  echo "== fp16 by default, load fixed"
  timeout 220 bash bench/gpu/default_fp16.sh > "$O/default_fp16.log" 2>&1
  grep -E "^(first|second):|^W2|^corrupted|^fp32" "$O/default_fp16/summary.txt"
  ;;
e)
  # After the fp16 and 8-bit tuners were made to share one timing loop: both still tune.
  E=.gpu/embedrt; STS=.gpu/stsb-en-dev.csv; D=/tmp/mpnet; P=1x8:256x128:1024x512
  python3 .gpu/make_mpnet.py $D .gpu/tokenizer.json > /dev/null 2>&1
  $E build --model $D --precision fp16 --profile $P -o /tmp/fp16.plan 2>/dev/null | tail -1 | cut -c1-300
  $E info --plan /tmp/fp16.plan | grep -i "gemm algorithms"
  $E calibrate --model $D --input "$STS" --precision fp8 --calibration-size 256 --no-fallback \
    -o /tmp/fp8.table.json > /dev/null 2>&1
  $E build --model $D --precision fp8 --profile $P --calibration-table /tmp/fp8.table.json \
    --tune-8bit -o /tmp/fp8.plan 2>/dev/null | tail -1 | grep -o '"tuned_8bit_gemms":[0-9]*'
  ;;
d)
  # The PyTorch fp16 peer on the same MPNet-base and GPU (parts a-c had no time for it).
  python3 .gpu/make_mpnet.py /tmp/mpnet .gpu/tokenizer.json > /dev/null 2>&1
  timeout 200 python3 .gpu/peer_torch.py /tmp/mpnet .gpu/stsb-en-dev.csv 2>&1 | tail -4
  ;;
esac
