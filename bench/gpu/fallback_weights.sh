#!/bin/bash
# One device call (~7 minutes): 8-bit fallback weights (`--fallback-weights 8bit`: the fallback
# GEMMs' weights in 1 byte, widened to fp16 before their GEMM) against fp16 ones (`float`, the
# default until this has run), and the committed accuracy checks.
#  1. MiniLM, real weights (quant.sh PARTS=minilm): default tables (fp16 fallbacks), plans,
#     `info` (GEMM weight bytes vs fp32), STS-B dev Spearman, GPU vs the CPU fake-quant reference.
#  2. MiniLM int8 calibrated with `--fallback-weights 8bit` (its own fallback search): the
#     plan's weight bytes, STS-B dev, speed, and GPU vs CPU fake-quant, beside (1)'s int8.
#  3. MPNet-base (random weights) int8, every layer's FFN-in and FFN-out in fallback, 8-bit
#     against fp16 fallback weights: what widening a weight before each fallback GEMM costs in
#     W1/W2/W3 where the weights are large.
#  4. gpu_check parity with the default options (fp16 vs fp32 STS-B now within 0.05).
# Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh); device call with carry [".gpu"]:
#   bash bench/gpu/fallback_weights.sh        (results under $OUT: fallback.txt first)
set -uo pipefail
OUT=${OUT:-/tmp/out}; LIMIT=${LIMIT:-520}
mkdir -p "$OUT/quant"
R="$OUT/fallback.txt"
PARTS=minilm BUDGET=200 OUT="$OUT/quant" bash bench/gpu/quant.sh > "$OUT/quant.txt" 2>&1
echo "1. quant (minilm, default tables: fp16 fallback weights) done at ${SECONDS}s" | tee "$R"
cat "$OUT/quant/summary.txt" >> "$R" 2>/dev/null
O=/tmp/fwres BUDGET=$((LIMIT - 60))
source "$(dirname "$0")/steps.sh"
# A table's copy with other fallback weights (the same scales and fallback list).
with_fw() { python3 -c "import json,sys; t=json.load(open(sys.argv[1])); t['fallback_weights']=sys.argv[3]; json.dump(t, open(sys.argv[2],'w'))" "$1" "$2" "$3"; }
# 2. MiniLM int8 with 8-bit fallback weights, its fallback set chosen with them.
M8=/tmp/qplans/minilm-int8-8bit
step minilm-calibrate-int8-8bit 150 $E calibrate --model $G/minilm --input "$STS" --precision int8 \
  --calibration-size 512 --fallback-weights 8bit -o $M8.table.json
if [ -f $M8.table.json ]; then
  step minilm-build-int8-8bit 150 $E build --model $G/minilm --precision int8 --profile 1x8:256x128:1024x256 \
    --max-batch-tokens 32768 --calibration-table $M8.table.json --eval "$STS" --held-out 1000 -o $M8.plan
  step minilm-info-int8-8bit 20 $E info --plan $M8.plan
  step minilm-eval-int8-8bit 60 $E eval --plan $M8.plan --sts "$STS"
  step minilm-bench-int8-8bit 150 $C bench-plan $G/minilm "$STS" $M8.plan /tmp/qplans/minilm-fp32.plan
  step minilm-gpu-embed-int8-8bit 60 $E embed --plan $M8.plan --input /tmp/qplans/ref256.jsonl \
    --output $M8.gpu.jsonl
  step minilm-cpu-fq-embed-int8-8bit 120 $E embed --model $G/minilm --device cpu --precision int8 \
    --calibration-table $M8.table.json --input /tmp/qplans/ref256.jsonl --output $M8.cpu.jsonl
  step minilm-gpu-vs-cpu-fq-int8-8bit 30 python3 bench/gpu/quant_cpu_ref.py compare $M8.gpu.jsonl $M8.cpu.jsonl
  # The same table with fp16 fallback weights on the GPU: what the widening changes.
  with_fw $M8.table.json $M8-float.table.json float
  step minilm-build-int8-8bit-as-float 150 $E build --model $G/minilm --precision int8 \
    --profile 1x8:256x128:1024x256 --max-batch-tokens 32768 --calibration-table $M8-float.table.json \
    -o $M8-float.plan
  step minilm-gpu-embed-int8-8bit-as-float 60 $E embed --plan $M8-float.plan \
    --input /tmp/qplans/ref256.jsonl --output $M8-float.gpu.jsonl
  step minilm-8bit-vs-float 30 python3 bench/gpu/quant_cpu_ref.py compare $M8.gpu.jsonl $M8-float.gpu.jsonl
fi
# 3. MPNet-base int8 with every FFN GEMM in fallback.
mpnet_model
FB=$(python3 -c "print(','.join(f'layers.{l}.{k}' for l in range(12) for k in ('ffn_in','ffn_out')))")
if [ -d "$D" ]; then
  step mpnet-calibrate-int8 90 $E calibrate --model $D --input "$STS" --precision int8 \
    --calibration-size 256 --no-fallback -o $Q/int8.table.json
  for fw in 8bit float; do
    [ -f $Q/int8.table.json ] && with_fw $Q/int8.table.json $Q/int8-$fw.table.json $fw
    T=$Q/int8-$fw.table.json
    step mpnet-build-int8-$fw 120 $E build --model $D --precision int8 --profile $P $TOK \
      --calibration-table $T --fallback "$FB" -o $Q/int8-$fw.plan
    step mpnet-info-int8-$fw 20 $E info --plan $Q/int8-$fw.plan
  done
  mpnet_plan fp32 120
  for fw in 8bit float; do
    step mpnet-bench-int8-$fw 120 $C bench-plan $D "$STS" $Q/int8-$fw.plan $Q/fp32.plan
  done
fi
# 4. parity, default options.
ONLY=default OUT="$OUT/options-default" bash bench/gpu/engine_options_check.sh 2>&1 \
  | grep -E '^(ok|FAIL)' | tee -a "$R"
echo "4. parity done at ${SECONDS}s" | tee -a "$R"
python3 bench/gpu/fallback_summary.py "$O" /tmp/qres | tee -a "$R"
tar czf "$OUT/fallback-results.tgz" -C "$O" . 2>/dev/null
cat "$R"
exit 0
