#!/bin/bash
# One device call (~5 minutes) for issue 11's fp8 speed: which weight scaling and GELU form
# make the fp8 plan fastest at the accuracy targets? Run 21 measured the 8-bit GEMMs at 6.1 of
# 11.1 ms a W1 call (~0.9 PFLOP/s, under half of fp8's peak) and the GELU + re-quantize pass at
# 1.8 ms. Two table options aim at them (docs/perf/quantization.md):
#   --weight-scales tensor  one scale a weight: cuBLASLt's scalar-scaled fp8 GEMMs instead of
#                           outer-vector (per-channel) ones
#   --gelu tanh             FFN-in's GELU in cuBLASLt's epilogue (tanh form), writing FFN-out's
#                           fp8 input itself: no GELU pass
#   a third part, fp8       `--attention-inputs fp8`: the fp8 QKV GEMM writes e4m3 Q, K, V and
#                           attention_tc_q8 reads them (e.g. FORMS="tensor-tanh tensor-tanh-fp8")
# MPNet-base random weights (make_mpnet.py), profile 1x8:256x128:1024x512, 32k-token budget:
# one fp8 calibration (the statistics do not depend on the two options), four tables made from
# it, four plans; gpu-check bench-plan for fp16 and each (cosine to the fp32 plan over the 6,000
# STS-B dev sentences, W1/W2/W3, per-stage times). MiniLM (real weights): each form built with
# --eval (STS-B dev Spearman drop, measured on the GPU), and the GPU tensor+tanh plan against
# the CPU fake-quant reference of the same table. Then the PyTorch fp8 peer on MPNet-base.
# Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh); device call with carry [".gpu"]:
#   bash bench/gpu/fp8_forms.sh
set -uo pipefail
O=/tmp/fp8forms
BUDGET=${BUDGET:-480}
REF_FORMS=${REF_FORMS:-channel-exact tensor-tanh}
source "$(dirname "$0")/steps.sh"
FORMS=${FORMS:-channel-exact tensor-exact channel-tanh tensor-tanh}
# tables FROM PREFIX: PREFIX-<form>.table.json from one calibration table, options set.
tables() {
  python3 - "$1" "$2" $FORMS <<'PY'
import json, sys
src, prefix, forms = sys.argv[1], sys.argv[2], sys.argv[3:]
t = json.load(open(src))
for f in forms:
    w, g, *a = f.split("-")
    form = {"weight_scales": w, "gelu": g, "attention_inputs": a[0] if a else "float"}
    json.dump({**t, **form}, open(f"{prefix}-{f}.table.json", "w"))
PY
}
P=1x8:256x128:1024x512; TOK="--max-batch-tokens 32768"; D=/tmp/mpnet; Q=/tmp/qplans
[ -d $D ] || step make-mpnet 150 python3 $G/make_mpnet.py $D $G/tokenizer.json
step mpnet-calibrate 60 $E calibrate --model $D --input "$STS" --precision fp8 \
  --calibration-size 512 --no-fallback -o $Q/mpnet.table.json
tables $Q/mpnet.table.json $Q/mpnet
step mpnet-build-fp32 60 $E build --model $D --precision fp32 --profile $P $TOK -o $Q/mpnet-fp32.plan
step mpnet-build-fp16 60 $E build --model $D --precision fp16 --profile $P $TOK -o $Q/mpnet-fp16.plan
for f in $FORMS; do
  step mpnet-build-$f 60 $E build --model $D --precision fp8 --profile $P $TOK \
    --calibration-table $Q/mpnet-$f.table.json -o $Q/mpnet-$f.plan
done
for p in fp16 $FORMS; do
  [ -f $Q/mpnet-$p.plan ] && step mpnet-bench-$p 90 $C bench-plan $D "$STS" $Q/mpnet-$p.plan $Q/mpnet-fp32.plan
done
step mpnet-info-tensor-tanh 20 $E info --plan $Q/mpnet-tensor-tanh.plan

if [ -d $G/minilm ]; then
  M=$G/minilm; MP=1x8:256x128:1024x256
  step minilm-calibrate 60 $E calibrate --model $M --input "$STS" --precision fp8 \
    --calibration-size 512 --no-fallback -o $Q/minilm.table.json
  tables $Q/minilm.table.json $Q/minilm
  for f in $FORMS; do
    step minilm-build-$f 60 $E build --model $M --precision fp8 --profile $MP $TOK \
      --calibration-table $Q/minilm-$f.table.json --eval "$STS" --held-out 1000 -o $Q/minilm-$f.plan
  done
  step ref-sentences 20 python3 bench/gpu/quant_cpu_ref.py sentences "$STS" 256 $Q/ref256.jsonl
  for f in $REF_FORMS; do
    step minilm-gpu-embed-$f 60 $E embed --plan $Q/minilm-$f.plan --input $Q/ref256.jsonl \
      --output $Q/gpu-$f.jsonl
    step minilm-cpu-embed-$f 120 $E embed --model $M --device cpu --precision fp8 \
      --calibration-table $Q/minilm-$f.table.json --input $Q/ref256.jsonl --output $Q/cpu-$f.jsonl
    step minilm-gpu-vs-cpu-$f 30 python3 bench/gpu/quant_cpu_ref.py compare $Q/gpu-$f.jsonl $Q/cpu-$f.jsonl
  done
fi
[ "${PEER:-1}" = 1 ] && step peer-fp8 150 python3 bench/gpu/peer_torch_fp8.py $D "$STS"
python3 bench/gpu/fp8_forms_summary.py "$O" $FORMS | tee "$O/summary.txt"
[ -n "${OUT:-}" ] && tar czf "$OUT/fp8-forms-results.tgz" -C "$O" . && cp "$O/summary.txt" "$OUT/"
exit 0
