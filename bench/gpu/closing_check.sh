#!/bin/bash
# One device call (~8 minutes): the committed tree's accuracy, memory and speed on the GPU.
#  1. MiniLM, real weights (quant.sh, PARTS=minilm): calibration, fp32/fp16/int8/fp8 plans,
#     STS-B dev Spearman of each, cosine vs the fp32 plan, GPU vs the CPU fake-quant reference.
#  2. gpu_check parity (CPU vs GPU fp32, fp16 vs fp32, batch composition, graphs, STS) with the
#     default engine options and two variants (engine_options_check.sh, a label at a time).
#  3. `embedrt serve --model MPNET_DIR` with no flag: the cached fp16 plan, GPU memory under
#     load (default_fp16.sh, SERVE_ONLY=1).
#  4. MPNet-base fp16 and fp8 default plans, W1/W2/W3 twice each, with the PyTorch peers
#     (final_defaults.sh), in what is left of LIMIT seconds.
# Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh); device call with carry [".gpu"]:
#   bash bench/gpu/closing_check.sh        (results under $OUT: closing.txt first)
set -uo pipefail
OUT=${OUT:-/tmp/out}; LIMIT=${LIMIT:-500}
mkdir -p "$OUT/quant" "$OUT/final"
R="$OUT/closing.txt"
PARTS=minilm BUDGET=${QUANT_BUDGET:-180} OUT="$OUT/quant" bash bench/gpu/quant.sh > "$OUT/quant.txt" 2>&1
echo "1. quant (minilm) done at ${SECONDS}s" | tee "$R"
cat "$OUT/quant/summary.txt" >> "$R" 2>/dev/null
for label in default graphs-off one-slot cli; do
  ONLY=$label OUT="$OUT/options-$label" bash bench/gpu/engine_options_check.sh 2>&1 \
    | grep -E '^(ok|FAIL)' | tee -a "$R"
done
echo "2. parity done at ${SECONDS}s" | tee -a "$R"
SERVE_ONLY=1 OUT="$OUT" bash bench/gpu/default_fp16.sh > "$OUT/default_fp16.txt" 2>&1
echo "3. serve done at ${SECONDS}s" | tee -a "$R"
cat "$OUT/default_fp16/summary.txt" >> "$R" 2>/dev/null
BUDGET=$((LIMIT - SECONDS)) OUT="$OUT/final" bash bench/gpu/final_defaults.sh > "$OUT/final.txt" 2>&1
echo "4. speed done at ${SECONDS}s" | tee -a "$R"
cat "$OUT/final/summary.txt" >> "$R" 2>/dev/null
cat "$R"
exit 0
