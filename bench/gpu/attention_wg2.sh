#!/bin/bash
# One device call (~6 minutes), after bench/gpu/attention_wg.sh: the three wgmma attention
# kernels (EMBEDRT_ATTENTION=wg: Q in registers; wg-q: Q in shared memory; wg-qo: and the two
# key tiles of batches of at most 128 tokens overlapped) against tc (attention_tc), fp16 and
# fp8 MPNet-base plans (random weights, profile 1x8:256x128:1024x512, 32k-token budget).
# Parity on mixed lengths 1..512 and on texts of 60..126 words (batches of 113..128 tokens,
# the overlapped path), each variant against tc on the same plan; bench-plan interleaved
# twice; ncu (duration, throughput, occupancy, stall reasons) on one W1 launch of each
# kernel; PyTorch fp16 and fp8 peers in the same call.
# Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh); carry [".gpu"]:
#   bash bench/gpu/attention_wg2.sh
set -uo pipefail
O=/tmp/awg2; BUDGET=${BUDGET:-540}
source "$(dirname "$0")/steps.sh"
VARIANTS="tc wg wg-q wg-qo"
mpnet_model
mpnet_plan fp16 150
mpnet_plan fp32 90
mpnet_fp8_plan 120
python3 bench/gpu/mixed_texts.py "$O/mixed.jsonl"
python3 - "$O/w128.jsonl" <<'PY'
import json, random, sys
r = random.Random(11)
words = ["the", "a", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "model", "vector"]
with open(sys.argv[1], "w") as f:
    for i in range(96):
        f.write(json.dumps({"text": " ".join(r.choice(words) for _ in range(r.randrange(60, 127)))}) + "\n")
PY
for p in fp16 fp8; do
  for a in $VARIANTS; do
    for t in mixed w128; do
      step embed-$p-$a-$t 120 env EMBEDRT_ATTENTION=$a $E embed --plan $Q/$p.plan --input "$O/$t.jsonl" --batch-size 32 --output "$O/emb-$p-$a-$t.jsonl"
    done
  done
done
step embed-fp32-tc-mixed 120 $E embed --plan $Q/fp32.plan --input "$O/mixed.jsonl" --batch-size 32 --output "$O/emb-fp32-tc-mixed.jsonl"
step embed-fp32-tc-w128 120 $E embed --plan $Q/fp32.plan --input "$O/w128.jsonl" --batch-size 32 --output "$O/emb-fp32-tc-w128.jsonl"
for n in 1 2; do
  for p in fp16 fp8; do
    for a in $VARIANTS; do
      step bench-$p-$a-$n 120 env EMBEDRT_ATTENTION=$a $C bench-plan $D "$STS" $Q/$p.plan
    done
  done
done
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for a in $VARIANTS; do
  step ncu-$a 90 env EMBEDRT_ATTENTION=$a "$NCU" --clock-control none --kernel-name "regex:attention_(tc|wg.*)$" \
    --launch-skip 12 --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
    $C profile $Q/fp16.plan
done
step peer-fp16 150 python3 $G/peer_torch.py $D "$STS"
step peer-fp8 150 python3 bench/gpu/peer_torch_fp8.py $D "$STS"
python3 - "$O" <<'PY' | tee "$O/summary.txt"
import sys
sys.path.insert(0, "bench/gpu")
from bench_log import parity_bench_summary
tags, pairs = ["fp32-tc-mixed", "fp32-tc-w128"], []
for p in ("fp16", "fp8"):
    for t in ("mixed", "w128"):
        tags += [f"{p}-{a}-{t}" for a in ("tc", "wg", "wg-q", "wg-qo")]
        pairs += [(f"{p}-{a}-{t}", f"{p}-tc-{t}") for a in ("wg", "wg-q", "wg-qo")]
        pairs += [(f"{p}-{a}-{t}", f"fp32-tc-{t}") for a in ("tc", "wg-qo")]
parity_bench_summary(sys.argv[1], tags, pairs, ("peer-fp16", "peer-fp8"))
PY
for a in $VARIANTS; do
  echo "== ncu $a"
  grep -E "^  attention|Duration|DRAM Throughput|L2 Cache Throughput|Compute \(SM\)|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Memory Throughput" "$O/ncu-$a.log" | head -12
  grep -E "smsp__average_warps_issue_stalled" "$O/ncu-$a.log" | awk '$NF+0 > 0.2' | sort -k3 -g -r | head -10
done | tee -a "$O/summary.txt"
[ -n "${OUT:-}" ] && tar czf "$OUT/awg2.tgz" --exclude="emb-*.jsonl" -C /tmp awg2 && cp "$O/summary.txt" "$OUT/"
exit 0
