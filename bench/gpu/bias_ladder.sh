#!/bin/bash
# One device call (~6 minutes), run 29: two changes against the binary before them
# (.gpu/old/, built from c595dde), MPNet-base random weights, profile 1x8:256x128:1024x512:
#   bias table: the tensor-core attention kernels copy MPNet's relative bias from the fp32
#     [heads, 2 max_len - 1] table made at load (cp.async, in the first K/V tile's group)
#     instead of gathering it through the bucket table and the [buckets, heads] bias;
#   ladder: `embedrt build` tunes cuBLASLt's algorithms on up to 8 token counts an octave
#     instead of powers of two (a plan-build change: an old plan keeps its algorithms).
# Parity: mixed lengths 1..512 through `embed`, new binary against old on the same plan and
# against the fp32 plan; fp8 likewise. Then bench-plan interleaved: before (old binary, old
# plan), bias (new binary, old plan), both (new binary, new plan); fp16 and fp8, twice each;
# the PyTorch fp16 peer in the same call.
# Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh) and .gpu/old/; carry [".gpu"]:
#   bash bench/gpu/bias_ladder.sh
set -uo pipefail
O=/tmp/bl; BUDGET=${BUDGET:-500}
source "$(dirname "$0")/steps.sh"
(cd $G/old && gunzip -f embedrt.gz embedrt-gpu-check.gz 2>/dev/null; chmod +x embedrt embedrt-gpu-check)
EO=$G/old/embedrt; CO=$G/old/embedrt-gpu-check
mpnet_model
step build-fp16-old 90 $EO build --model $D --precision fp16 --profile $P $TOK -o $Q/fp16-old.plan
step build-fp16-new 120 $E build --model $D --precision fp16 --profile $P $TOK -o $Q/fp16-new.plan
mpnet_plan fp32 90
step calibrate 60 $E calibrate --model $D --input "$STS" --precision fp8 \
  --calibration-size 512 --no-fallback -o $Q/t.table.json
step build-fp8-old 60 $EO build --model $D --precision fp8 --profile $P $TOK --calibration-table $Q/t.table.json -o $Q/fp8-old.plan
step build-fp8-new 90 $E build --model $D --precision fp8 --profile $P $TOK --calibration-table $Q/t.table.json -o $Q/fp8-new.plan
python3 bench/gpu/mixed_texts.py "$O/mixed.jsonl"
emb() { # emb TAG BINARY PLAN
  step embed-$1 120 $2 embed --plan $3 --input "$O/mixed.jsonl" --batch-size 32 --output "$O/emb-$1.jsonl"
}
emb fp16-oldbin $EO $Q/fp16-old.plan
emb fp16-newbin $E $Q/fp16-old.plan
emb fp32 $E $Q/fp32.plan
emb fp8-oldbin $EO $Q/fp8-old.plan
emb fp8-newbin $E $Q/fp8-old.plan
for n in 1 2; do
  for p in fp16 fp8; do
    step bench-$p-before-$n 90 $CO bench-plan $D "$STS" $Q/$p-old.plan
    step bench-$p-bias-$n 90 $C bench-plan $D "$STS" $Q/$p-old.plan
    if [ $n = 1 ]; then
      step bench-$p-both-$n 120 $C bench-plan $D "$STS" $Q/$p-new.plan $Q/fp32.plan
    else
      step bench-$p-both-$n 90 $C bench-plan $D "$STS" $Q/$p-new.plan
    fi
  done
done
step info-fp16-new 20 $E info --plan $Q/fp16-new.plan
step peer-fp16 150 python3 $G/peer_torch.py $D "$STS"
python3 -c 'import sys; sys.path.insert(0, "bench/gpu"); from bench_log import bias_ladder_summary; bias_ladder_summary(sys.argv[1], ("peer-fp16",))' "$O" | tee "$O/summary.txt"
[ -n "${OUT:-}" ] && tar czf "$OUT/bl.tgz" -C /tmp bl && cp "$O/summary.txt" "$OUT/"
exit 0
