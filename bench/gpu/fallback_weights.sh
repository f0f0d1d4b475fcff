#!/bin/bash
# One device call (~7 minutes): 8-bit fallback weights (`--fallback-weights 8bit`, the new
# default for tables) against fp16 ones (`float`), and the committed accuracy checks.
#  1. MiniLM, real weights (quant.sh PARTS=minilm): default tables (now 8-bit fallbacks), plans,
#     `info` (GEMM weight bytes vs fp32), STS-B dev Spearman, GPU vs the CPU fake-quant reference.
#  2. MiniLM int8 with fp16 fallback weights: the same table but `fallback_weights: float`; its
#     plan's weight bytes, STS-B dev, speed, and GPU vs CPU fake-quant, beside (1).
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
echo "1. quant (minilm, 8-bit fallbacks) done at ${SECONDS}s" | tee "$R"
cat "$OUT/quant/summary.txt" >> "$R" 2>/dev/null
O=/tmp/fwres BUDGET=$((LIMIT - 60))
source "$(dirname "$0")/steps.sh"
# A table's copy with fp16 fallback weights (the same scales and fallback list).
as_float() { python3 -c "import json,sys; t=json.load(open(sys.argv[1])); t['fallback_weights']='float'; json.dump(t, open(sys.argv[2],'w'))" "$1" "$2"; }
# 2. MiniLM int8, fp16 fallback weights.
MT=/tmp/qplans/minilm-int8.table.json
if [ -f "$MT" ]; then
  as_float "$MT" /tmp/qplans/minilm-int8-float.table.json
  step minilm-build-int8-float 150 $E build --model $G/minilm --precision int8 --profile 1x8:256x128:1024x256 \
    --max-batch-tokens 32768 --calibration-table /tmp/qplans/minilm-int8-float.table.json --eval "$STS" \
    --held-out 1000 -o /tmp/qplans/minilm-int8-float.plan
  step minilm-info-int8-float 20 $E info --plan /tmp/qplans/minilm-int8-float.plan
  step minilm-eval-int8-float 60 $E eval --plan /tmp/qplans/minilm-int8-float.plan --sts "$STS"
  step minilm-bench-int8-float 150 $C bench-plan $G/minilm "$STS" /tmp/qplans/minilm-int8-float.plan /tmp/qplans/minilm-fp32.plan
  step minilm-gpu-embed-int8-float 60 $E embed --plan /tmp/qplans/minilm-int8-float.plan \
    --input /tmp/qplans/ref256.jsonl --output /tmp/qplans/minilm-gpu-int8-float.jsonl
  step minilm-cpu-fq-embed-int8-float 120 $E embed --model $G/minilm --device cpu --precision int8 \
    --calibration-table /tmp/qplans/minilm-int8-float.table.json --input /tmp/qplans/ref256.jsonl \
    --output /tmp/qplans/minilm-cpu-int8-float.jsonl
  step minilm-gpu-vs-cpu-fq-int8-float 30 python3 bench/gpu/quant_cpu_ref.py compare \
    /tmp/qplans/minilm-gpu-int8-float.jsonl /tmp/qplans/minilm-cpu-int8-float.jsonl
  # The 8-bit plan's widened fallbacks against the fp16 ones: the same model up to weight rounding.
  step minilm-8bit-vs-float 30 python3 bench/gpu/quant_cpu_ref.py compare \
    /tmp/qplans/minilm-gpu-int8.jsonl /tmp/qplans/minilm-gpu-int8-float.jsonl
fi
# 3. MPNet-base int8 with every FFN GEMM in fallback.
mpnet_model
FB=$(python3 -c "print(','.join(f'layers.{l}.{k}' for l in range(12) for k in ('ffn_in','ffn_out')))")
if [ -d "$D" ]; then
  step mpnet-calibrate-int8 90 $E calibrate --model $D --input "$STS" --precision int8 \
    --calibration-size 256 --no-fallback -o $Q/int8.table.json
  [ -f $Q/int8.table.json ] && as_float $Q/int8.table.json $Q/int8-float.table.json
  for fw in 8bit float; do
    T=$Q/int8.table.json; [ $fw = float ] && T=$Q/int8-float.table.json
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
python3 bench/gpu/fallback_summary.py "$O" /tmp/qplans | tee -a "$R"
tar czf "$OUT/fallback-results.tgz" -C "$O" . 2>/dev/null
cat "$R"
exit 0
