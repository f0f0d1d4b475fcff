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
esac
