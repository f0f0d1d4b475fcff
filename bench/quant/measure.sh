#!/usr/bin/env bash
# STS-B dev Spearman x 100 of the CPU fake-quant reference of the real
# all-MiniLM-L6-v2 for every calibrator, two calibration sizes and both
# formats, every GEMM quantized (no fallback) and with the default
# fallback search; one JSON line per run. Usage: bench/quant/measure.sh > results.jsonl
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${EMBEDRT_BIN:-target/release/embedrt}
M=${EMBEDRT_MINILM:-.cache/all-MiniLM-L6-v2}
DATA=${STSB:-/work/shared/data/stsb}
TRAIN=$DATA/stsb-en-train.csv
DEV=$DATA/stsb-en-dev.csv
fp32=$($BIN eval --model "$M" --device cpu --sts "$DEV" | sed 's/.*"spearman":\([0-9.]*\).*/\1/')
echo "{\"precision\":\"fp32\",\"spearman\":$fp32}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for precision in int8 fp8; do
  for size in 128 512; do
    for cal in minmax percentile:99.99 percentile:99.999 entropy mse; do
      for fb in no_fallback fallback; do
        flag=(); [ "$fb" = no_fallback ] && flag=(--no-fallback)
        t=$tmp/t.json
        start=$(date +%s.%N)
        $BIN calibrate --model "$M" --input "$TRAIN" -o "$t" --precision $precision \
          --calibrator $cal --calibration-size $size "${flag[@]}" > "$tmp/out.json" 2>/dev/null
        secs=$(echo "$(date +%s.%N) - $start" | bc)
        q=$($BIN eval --model "$M" --device cpu --precision $precision --calibration-table "$t" --sts "$DEV" | sed 's/.*"spearman":\([0-9.]*\).*/\1/')
        nfb=$(python3 -c "import json;t=json.load(open('$t'));print(len(t['fallback']))")
        cos=$(python3 -c "import json;t=json.load(open('$t'));a=t.get('accuracy');print(a['mean_cosine'] if a else 'null')")
        echo "{\"precision\":\"$precision\",\"size\":$size,\"calibrator\":\"$cal\",\"mode\":\"$fb\",\"fallback\":$nfb,\"held_out_cosine\":$cos,\"spearman\":$q,\"drop\":$(echo "$fp32 - $q" | bc -l),\"calibrate_s\":$secs}"
      done
    done
  done
done
