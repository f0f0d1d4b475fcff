#!/bin/bash
# The third 2026-12-02 session's device calls, one script (binaries prebuilt in .gpu/ by
# bench/gpu/prepare_carry.sh; carry [".gpu"]):
#   PART=fp16:  issue 14's W3: the small-token LayerNorm moved into the next kernel
#               (`small_layernorm=next`, opt-in) against the ticket (default):
#               gpu_check parity for both, then W1/W2/W3 with mixed-length parity
#               (fp16_variants.sh), with W3's per-stage times.
#   PART=quant: issue 11's W3 regression: quantized plans' small batches through the
#               small-token kernels with 8-bit weights (EMBEDRT_SMALL_LINEAR_8BIT=1, opt-in) against their own 8-bit GEMM
#               loop (EMBEDRT_SMALL_LINEAR=0, before). MPNet-base fp8 and int8, MiniLM (real
#               weights) fp8: cosine to the fp32 plan batched and one sentence at a time,
#               STS-B Spearman both ways, W1/W2/W3.
set -uo pipefail
O=${OUT:-/tmp/out}
BUDGET=${BUDGET:-480}
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=clocks.sm,power.draw --format=csv,noheader >> "$O/gpu.txt"
D=/tmp/mpnet; Q=/tmp/qplans; P=1x8:256x128:1024x512
case "${PART:-fp16}" in
fp16)
  for label in default small-ln-next; do
    OUT=$O/parity ONLY=$label timeout 150 bash bench/gpu/engine_options_check.sh 2>&1 | grep -E "^(ok|FAIL)"
  done
  OUT=$O/variants VARIANTS="default EMBEDRT_SMALL_LAYERNORM=next EMBEDRT_SMALL_LINEAR=0" \
    timeout 280 bash bench/gpu/fp16_variants.sh > "$O/variants.log" 2>&1
  tail -5 "$O/variants.log"
  python3 bench/gpu/stages.py "$O/variants" w3
  ;;
quant)
  [ -d $D ] || step make-mpnet 150 python3 $G/make_mpnet.py $D $G/tokenizer.json
  step mpnet-build-fp32 60 $E build --model $D --precision fp32 --profile $P -o $Q/mpnet-fp32.plan
  for f in fp8 int8; do
    step mpnet-calibrate-$f 60 $E calibrate --model $D --input "$STS" --precision $f \
      --calibration-size 512 --no-fallback -o $Q/mpnet-$f.table.json
    step mpnet-build-$f 90 $E build --model $D --precision $f --profile $P --max-batch-tokens 32768 \
      --calibration-table $Q/mpnet-$f.table.json -o $Q/mpnet-$f.plan
  done
  export EMBEDRT_SMALL_LINEAR_8BIT=1
  step bench-mpnet-fp8 90 $C bench-plan $D "$STS" $Q/mpnet-fp8.plan $Q/mpnet-fp32.plan
  step bench-mpnet-fp8-small-off 90 env EMBEDRT_SMALL_LINEAR=0 \
    $C bench-plan $D "$STS" $Q/mpnet-fp8.plan $Q/mpnet-fp32.plan
  step bench-mpnet-int8 90 $C bench-plan $D "$STS" $Q/mpnet-int8.plan $Q/mpnet-fp32.plan
  M=$G/minilm; MP=1x8:256x128:1024x256
  step minilm-build-fp32 60 $E build --model $M --precision fp32 --profile $MP -o $Q/minilm-fp32.plan
  step minilm-calibrate-fp8 60 $E calibrate --model $M --input "$STS" --precision fp8 \
    --calibration-size 512 -o $Q/minilm-fp8.table.json
  step minilm-build-fp8 90 $E build --model $M --precision fp8 --profile $MP --max-batch-tokens 32768 \
    --calibration-table $Q/minilm-fp8.table.json -o $Q/minilm-fp8.plan
  step bench-minilm-fp8 90 $C bench-plan $M "$STS" $Q/minilm-fp8.plan $Q/minilm-fp32.plan
  python3 - "$O" <<'PY' | tee "$O/summary.txt"
import json, os, sys
d = sys.argv[1]
print(open(os.path.join(d, "steps.txt")).read())
keys = ["cos_vs_reference_mean", "cos_vs_reference_min", "single_cos_vs_reference_mean",
        "single_cos_vs_reference_min", "single_cos_vs_batched_min", "spearman", "spearman_single",
        "spearman_reference", "w1_seq_per_s", "w2_sent_per_s", "w3_p50_ms", "w3_p99_ms"]
for name in ["mpnet-fp8", "mpnet-fp8-small-off", "mpnet-int8", "minilm-fp8"]:
    rec = {}
    p = os.path.join(d, f"bench-{name}.log")
    if os.path.exists(p):
        for line in open(p, errors="replace"):
            if line.startswith("{"):
                try:
                    rec.update(json.loads(line))
                except ValueError:
                    pass
    print(name, {k: round(rec[k], 6) for k in keys if isinstance(rec.get(k), (int, float))})
    stages = ", ".join(f"{n} {ms:.3f}" for n, ms in rec.get("stages_w3_ms", []))
    print(f"  W3 stages ms: {stages}")
PY
  ;;
esac
