#!/bin/bash
# One short device call: the fp8 default after run 25 (per-tensor weights, tanh GELU in the
# FFN-in epilogue, fast fp8 accumulation now the sm_90 default), built with no flag: MiniLM
# (real weights) STS-B dev drop measured on the GPU with --eval and the GPU plan against the CPU
# fake-quant reference, MPNet-base W1/W2/W3 and cosine to fp32 beside fp16. Carry [".gpu"]:
#   bash bench/gpu/fp8_fast_check.sh
set -uo pipefail
O=/tmp/fp8fast
BUDGET=${BUDGET:-240}
source "$(dirname "$0")/steps.sh"
P=1x8:256x128:1024x512; TOK="--max-batch-tokens 32768"; D=/tmp/mpnet; Q=/tmp/qplans
M=$G/minilm; MP=1x8:256x128:1024x256
step minilm-build-fp8-default 90 $E build --model $M --precision fp8 --profile $MP $TOK \
  --calibration "$STS" --eval "$STS" --held-out 1000 -o $Q/minilm-fp8-default.plan
step minilm-info 20 $E info --plan $Q/minilm-fp8-default.plan
step ref-sentences 20 python3 bench/gpu/quant_cpu_ref.py sentences "$STS" 256 $Q/ref256.jsonl
step minilm-gpu-embed 60 $E embed --plan $Q/minilm-fp8-default.plan --input $Q/ref256.jsonl \
  --output $Q/gpu.jsonl
step minilm-cpu-embed 120 $E embed --model $M --device cpu --precision fp8 \
  --calibration-table $Q/minilm-fp8-default.plan.calib.json --input $Q/ref256.jsonl --output $Q/cpu.jsonl
step minilm-gpu-vs-cpu-fp8-default 30 python3 bench/gpu/quant_cpu_ref.py compare $Q/gpu.jsonl $Q/cpu.jsonl
[ -d $D ] || step make-mpnet 150 python3 $G/make_mpnet.py $D $G/tokenizer.json
step mpnet-build-fp32 60 $E build --model $D --precision fp32 --profile $P $TOK -o $Q/mpnet-fp32.plan
step mpnet-build-fp16 60 $E build --model $D --precision fp16 --profile $P $TOK -o $Q/mpnet-fp16.plan
step mpnet-build-fp8-default 60 $E build --model $D --precision fp8 --profile $P $TOK \
  --calibration "$STS" -o $Q/mpnet-fp8-default.plan
for p in fp16 fp8-default; do
  [ -f $Q/mpnet-$p.plan ] && step mpnet-bench-$p 90 $C bench-plan $D "$STS" $Q/mpnet-$p.plan $Q/mpnet-fp32.plan
done
python3 bench/gpu/fp8_forms_summary.py "$O" fp8-default | tee "$O/summary.txt"
grep -h "quantization\|8-bit gemms\|accuracy" "$O/minilm-info.log"
[ -n "${OUT:-}" ] && tar czf "$OUT/fp8-fast-results.tgz" -C "$O" . && cp "$O/summary.txt" "$OUT/"
exit 0
