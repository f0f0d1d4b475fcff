#!/bin/bash
# One device call (<= 8 minutes) for the quantized plans (issue 11, GPU half):
#  1. MiniLM (real weights, .gpu/minilm): calibration tables from `embedrt calibrate` (statistics
#     of the fp32 CPU engine; bench/gpu/quant_table.py failed on the device in run 19), then `embedrt build`
#     fp32 / fp16 / int8 / fp8 plans; int8 and fp8 measured at build time against fp32 on the
#     GPU (--eval, 1000 held-out STS-B dev sentences) and int8 with the sensitivity fallback
#     (--accuracy-target); `embedrt info` (precision, GEMM bytes vs fp32, fallback, accuracy);
#     `embedrt eval` (STS-B dev Spearman: target drop <= 0.3); gpu-check bench-plan (cosine of
#     every sentence vs the fp32 plan, W1/W2/W3); then (1b) the CPU fake-quant reference with the
#     plan's own table on 256 sentences, and the GPU-vs-CPU-fake-quant cosine (quant_cpu_ref.py).
#  2. MPNet-base random weights (make_mpnet.py): the same plans, W1 (256x128), W2 (3,000 STS-B
#     dev sentences), W3 (one 16-token sentence), cosine vs fp32; the PyTorch fp16 peer and,
#     where it runs, PyTorch's fp8 path (peer_torch_fp8.py: torch._scaled_mm, row-wise scales).
# Every step is logged and may fail alone; a summary table comes last. Results in $OUT.
# Binaries come prebuilt in .gpu/ (bench/gpu/prepare_carry.sh, run from this worktree).
# usage (device): [PARTS="minilm mpnet fallback"] bash bench/gpu/quant.sh
set -uo pipefail
O=/tmp/qres
BUDGET=${BUDGET:-450}  # seconds; later steps are skipped (and say so) past it
source "$(dirname "$0")/steps.sh"
# PARTS picks sections (default all three): minilm, mpnet, fallback.
part() { [[ " ${PARTS:-minilm mpnet fallback} " == *" $1 "* ]]; }
python3 -c "import torchao; print('torchao', torchao.__version__)" > "$O/torchao.txt" 2>&1 || echo "torchao: not importable here ($(tail -1 "$O/torchao.txt"))" | tee -a "$O/steps.txt"

model_run() { # model_run TAG DIR PROFILE [BUILD_EVAL_ARGS...]
  local tag=$1 dir=$2 prof=$3; shift 3
  # Calibration tables from embedrt's own calibrator (CPU fp32 reference statistics);
  # CAL_ARGS adds e.g. --no-fallback for the random MPNet, whose search is slow on a CPU.
  for f in int8 fp8; do
    step "$tag-calibrate-$f" 150 $E calibrate --model "$dir" --input "$STS" --precision $f \
      --calibration-size 512 ${CAL_ARGS:-} -o /tmp/qplans/$tag-$f.table.json
  done
  step "$tag-build-fp32" 120 $E build --model "$dir" --precision fp32 --profile "$prof" --max-batch-tokens 32768 -o /tmp/qplans/$tag-fp32.plan
  step "$tag-build-fp16" 120 $E build --model "$dir" --precision fp16 --profile "$prof" --max-batch-tokens 32768 -o /tmp/qplans/$tag-fp16.plan
  for f in int8 fp8; do
    step "$tag-build-$f" 150 $E build --model "$dir" --precision $f --profile "$prof" --max-batch-tokens 32768 \
      --calibration-table /tmp/qplans/$tag-$f.table.json "$@" -o /tmp/qplans/$tag-$f.plan
  done
  for p in fp16 int8 fp8; do
    step "$tag-info-$p" 20 $E info --plan /tmp/qplans/$tag-$p.plan
    step "$tag-bench-$p" 150 $C bench-plan "$dir" "$STS" /tmp/qplans/$tag-$p.plan /tmp/qplans/$tag-fp32.plan
  done
}

# 1. MiniLM, real weights.
if part minilm && [ -d $G/minilm ]; then
  model_run minilm $G/minilm 1x8:256x128:1024x256 --eval "$STS" --held-out 1000
  for p in fp32 fp16 int8 fp8; do step "minilm-eval-$p" 60 $E eval --plan /tmp/qplans/minilm-$p.plan --sts "$STS"; done
  # 1b. The CPU fake-quant reference (the same table the plan holds, PLAN.calib.json: same
  # scales and fallback) on the device's CPU against the GPU plan: 256 STS-B dev sentences.
  step minilm-ref-sentences 20 python3 bench/gpu/quant_cpu_ref.py sentences "$STS" 256 /tmp/qplans/ref256.jsonl
  for f in int8 fp8; do
    T=/tmp/qplans/minilm-$f.plan.calib.json; [ -f "$T" ] || T=/tmp/qplans/minilm-$f.table.json
    step minilm-gpu-embed-$f 60 $E embed --plan /tmp/qplans/minilm-$f.plan --input /tmp/qplans/ref256.jsonl \
      --output /tmp/qplans/minilm-gpu-$f.jsonl
    step minilm-cpu-fq-embed-$f 120 $E embed --model $G/minilm --device cpu --precision $f \
      --calibration-table "$T" --input /tmp/qplans/ref256.jsonl --output /tmp/qplans/minilm-cpu-$f.jsonl
    step minilm-gpu-vs-cpu-fq-$f 30 python3 bench/gpu/quant_cpu_ref.py compare \
      /tmp/qplans/minilm-gpu-$f.jsonl /tmp/qplans/minilm-cpu-$f.jsonl
  done
  # Bad input: a table for the other format; fp8 on a GPU without it is checked in CI (unit test).
  step minilm-bad-format 30 $E build --model $G/minilm --precision fp8 --calibration-table /tmp/qplans/minilm-int8.table.json -o /tmp/qplans/bad.plan
fi

# 2. MPNet-base, random weights.
part mpnet && { [ -d /tmp/mpnet ] || step make-mpnet 200 python3 $G/make_mpnet.py /tmp/mpnet $G/tokenizer.json; }
if part mpnet && [ -d /tmp/mpnet ]; then
  CAL_ARGS=--no-fallback model_run mpnet /tmp/mpnet 1x8:256x128:1024x512
  step peer-fp16 200 python3 $G/peer_torch.py /tmp/mpnet "$STS"
  step peer-fp8 200 python3 bench/gpu/peer_torch_fp8.py /tmp/mpnet "$STS"
fi
# 3. The sensitivity fallback (last: the longest step): int8 MiniLM with a target the all-int8
# plan may miss; the most sensitive GEMMs fall back to fp16 until it holds.
if part fallback && [ -d $G/minilm ]; then
  # The sensitivity fallback: int8 with a target the all-int8 plan may miss.
  step minilm-build-int8-target 240 $E build --model $G/minilm --precision int8 --profile 1x8:256x128:1024x256 --max-batch-tokens 32768 \
    --calibration-table /tmp/qplans/minilm-int8.table.json --eval "$STS" --held-out 500 --accuracy-target 0.999 \
    -o /tmp/qplans/minilm-int8-target.plan
  step minilm-info-int8-target 20 $E info --plan /tmp/qplans/minilm-int8-target.plan
fi
python3 bench/gpu/quant_summary.py "$O" | tee "$O/summary.txt"
[ -n "${OUT:-}" ] && tar czf "$OUT/quant-results.tgz" -C "$O" . && cp "$O/summary.txt" "$OUT/"
