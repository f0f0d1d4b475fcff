#!/bin/bash
# One device call (~5 minutes) for the attention kernel (issue 14 item 2, issue 11's fp8 W1):
# the attention kernels (KERNELS, EMBEDRT_ATTENTION values): tc (attention_tc, and
# attention_tc_short with shared memory cut to the batch for batches of <= 112 tokens),
# tc-static (attention_tc for every batch) and pipe (attention_tc_pipe: resident blocks taking
# (sequence, head) items, the next key tile, Q rows and bias values loading while the current
# tile computes).
#   part 1, fp16 MPNet-base: bench/gpu/fp16_variants.sh (parity against the default on mixed
#           lengths 1..512 tokens, W1/W2/W3, W1 attention time);
#   part 2, MiniLM (BERT, head size 32, no bias) `parity` with pipe: GPU vs CPU, fp16 vs fp32;
#   part 3, the fp8 MPNet-base plan with no flag: bench-plan (cosine to the fp32 plan over
#           STS-B dev, W1/W2/W3, stages, W2's engine calls one at a time) with each kernel.
# Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh); device call with carry [".gpu"]:
#   bash bench/gpu/attention_pipe.sh
set -uo pipefail
RESULTS=${OUT:-}
mkdir -p /tmp/att-fp16
OUT=/tmp/att-fp16 VARIANTS=${VARIANTS:-"default tc-static pipe"} bash bench/gpu/fp16_variants.sh \
  | tee /tmp/att-fp16/summary.txt
O=/tmp/att-fp8; BUDGET=${BUDGET:-300}
source "$(dirname "$0")/steps.sh"
step minilm-parity-pipe 90 env EMBEDRT_ATTENTION=pipe $C parity $G/minilm "$STS"
mpnet_model
step calibrate 60 $E calibrate --model $D --input "$STS" --precision fp8 \
  --calibration-size 512 --no-fallback -o $Q/t.table.json
mpnet_plan fp32 60
step build-fp8 60 $E build --model $D --precision fp8 --profile $P $TOK --calibration-table $Q/t.table.json -o $Q/fp8.plan
KERNELS=${KERNELS:-"tc tc-static pipe"}
for a in $KERNELS; do
  step bench-fp16-$a 60 env EMBEDRT_ATTENTION=$a $C bench-plan $D "$STS" /tmp/mpnet-fp16.plan
  step bench-fp8-$a 60 env EMBEDRT_ATTENTION=$a $C bench-plan $D "$STS" $Q/fp8.plan $Q/fp32.plan
done
KERNELS=$KERNELS python3 - "$O" <<'PY' | tee "$O/summary.txt"
import os, sys
sys.path.insert(0, "bench/gpu")
from bench_log import merged, report
d = sys.argv[1]
print(open(os.path.join(d, "steps.txt")).read())
def rec(name):
    return merged(os.path.join(d, f"{name}.log"))
m = rec("minilm-parity-pipe")
print("minilm parity (pipe):", {k: v for k, v in m.items() if "cos" in k or "diff" in k or "spearman" in k})
for p in [f"{p}-{a}" for p in ("fp16", "fp8") for a in os.environ.get("KERNELS", "tc tc-static pipe").split()]:
    print(report(p, rec(f"bench-{p}")))
PY
if [ -n "$RESULTS" ]; then
  rm -f /tmp/att-fp16/emb-*.jsonl
  tar czf "$RESULTS/attention-pipe.tgz" -C /tmp att-fp16 att-fp8
  cat /tmp/att-fp16/summary.txt "$O/summary.txt" > "$RESULTS/summary.txt"
fi
exit 0
