#!/bin/bash
# One device call (~6 minutes) for the attention kernel (issue 14 item 2, issue 11's fp8 W1):
# attention_tc_mt2 (EMBEDRT_ATTENTION=mt2: 32 queries, two MMA row tiles, a warp; every K/V
# fragment feeds two MMAs) against attention_tc (16 a warp) and tc4.
#   part 1, fp16: bench/gpu/fp16_variants.sh (parity of each variant against the default on
#           mixed lengths 1..512 tokens, W1/W2/W3, W1 attention time);
#   part 2, fp8 MPNet-base plans with no flag (tensor scales, tanh GELU) and with
#           --attention-inputs fp8: bench-plan (cosine to the fp32 plan over STS-B dev, W1/W2/W3,
#           stages) with the default attention and with mt2.
# Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh); device call with carry [".gpu"]:
#   bash bench/gpu/attention_mt2.sh
set -uo pipefail
RESULTS=${OUT:-}
mkdir -p /tmp/att-fp16
OUT=/tmp/att-fp16 VARIANTS=${VARIANTS:-"default mt2 tc4"} bash bench/gpu/fp16_variants.sh \
  | tee /tmp/att-fp16/summary.txt
O=/tmp/att-fp8; BUDGET=${BUDGET:-330}
source "$(dirname "$0")/steps.sh"
mpnet_model
step calibrate 60 $E calibrate --model $D --input "$STS" --precision fp8 \
  --calibration-size 512 --no-fallback -o $Q/t.table.json
python3 -c "import json,sys; t=json.load(open(sys.argv[1])); t['attention_inputs']='fp8'; json.dump(t, open(sys.argv[2],'w'))" \
  $Q/t.table.json $Q/t8.table.json
mpnet_plan fp32 60
step build-fp8 60 $E build --model $D --precision fp8 --profile $P $TOK --calibration-table $Q/t.table.json -o $Q/fp8.plan
step build-fp8-qkv8 60 $E build --model $D --precision fp8 --profile $P $TOK --calibration-table $Q/t8.table.json -o $Q/fp8-qkv8.plan
for p in fp8 fp8-qkv8; do
  step bench-$p-tc 60 $C bench-plan $D "$STS" $Q/$p.plan $Q/fp32.plan
  step bench-$p-mt2 60 env EMBEDRT_ATTENTION=mt2 $C bench-plan $D "$STS" $Q/$p.plan $Q/fp32.plan
done
python3 - "$O" <<'PY' | tee "$O/summary.txt"
import os, sys
sys.path.insert(0, "bench/gpu")
from bench_log import merged
d = sys.argv[1]
print(open(os.path.join(d, "steps.txt")).read())
for p in ("fp8-tc", "fp8-mt2", "fp8-qkv8-tc", "fp8-qkv8-mt2"):
    r = merged(os.path.join(d, f"bench-{p}.log"))
    att = sum(ms for n, ms in r.get("stages_w1_ms", []) if n.startswith("attention"))
    tot = sum(ms for n, ms in r.get("stages_w1_ms", []))
    print(f"{p:14} cos {r.get('cos_vs_reference_mean', float('nan')):.5f} / {r.get('cos_vs_reference_min', float('nan')):.5f}"
          f"  W1 {r.get('w1_seq_per_s', float('nan')):8.0f}  W2 {r.get('w2_sent_per_s', float('nan')):8.0f}"
          f"  W3 {r.get('w3_p50_ms', float('nan')):.3f}  W1 attention {att:.3f} of {tot:.2f} ms")
PY
if [ -n "$RESULTS" ]; then
  rm -f /tmp/att-fp16/emb-*.jsonl
  tar czf "$RESULTS/attention-mt2.tgz" -C /tmp att-fp16 att-fp8
  cat /tmp/att-fp16/summary.txt "$O/summary.txt" > "$RESULTS/summary.txt"
fi
exit 0
