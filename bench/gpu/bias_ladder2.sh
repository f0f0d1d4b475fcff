#!/bin/bash
# One device call (~6 minutes), run 29's second, after bench/gpu/bias_ladder.sh: the binary
# as committed (.gpu/) against the one before run 29 (.gpu/old/, c595dde) and run 29's first
# build (.gpu/mid/: the bias table by cp.async in every tensor-core attention kernel, the
# ladder tuned at each step's top only). Now: cp.async only in attention_tc_short, plain
# loads from the table elsewhere; every ladder step tuned at both ends of the token range it
# serves (candidates of both ends, least summed time). MPNet-base random weights, profile
# 1x8:256x128:1024x512. Parity on mixed lengths 1..512 (new binary against old on the same
# plan; against the fp32 plan), then bench-plan interleaved: before (old binary, old plan),
# kernels (new binary, old plan), mid (mid binary, old plan; fp16), both (new binary, new
# plan), twice; PyTorch fp16 and fp8 peers in the same call.
# Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh), .gpu/old/, .gpu/mid/; carry [".gpu"]:
#   bash bench/gpu/bias_ladder2.sh
set -uo pipefail
O=/tmp/bl2; BUDGET=${BUDGET:-520}
source "$(dirname "$0")/steps.sh"
for b in old mid; do
  (cd $G/$b && gunzip -f embedrt.gz embedrt-gpu-check.gz 2>/dev/null; chmod +x embedrt embedrt-gpu-check)
done
EO=$G/old/embedrt; CO=$G/old/embedrt-gpu-check; CM=$G/mid/embedrt-gpu-check
mpnet_model
step build-fp16-old 90 $EO build --model $D --precision fp16 --profile $P $TOK -o $Q/fp16-old.plan
step build-fp16-new 150 $E build --model $D --precision fp16 --profile $P $TOK -o $Q/fp16-new.plan
mpnet_plan fp32 90
step calibrate 60 $E calibrate --model $D --input "$STS" --precision fp8 \
  --calibration-size 512 --no-fallback -o $Q/t.table.json
step build-fp8-old 60 $EO build --model $D --precision fp8 --profile $P $TOK --calibration-table $Q/t.table.json -o $Q/fp8-old.plan
step build-fp8-new 120 $E build --model $D --precision fp8 --profile $P $TOK --calibration-table $Q/t.table.json -o $Q/fp8-new.plan
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
  step bench-fp16-before-$n 90 $CO bench-plan $D "$STS" $Q/fp16-old.plan
  step bench-fp16-kernels-$n 90 $C bench-plan $D "$STS" $Q/fp16-old.plan
  step bench-fp16-mid-$n 90 $CM bench-plan $D "$STS" $Q/fp16-old.plan
  [ $n = 1 ] && R=$Q/fp32.plan || R=
  step bench-fp16-both-$n 120 $C bench-plan $D "$STS" $Q/fp16-new.plan $R
  step bench-fp8-before-$n 90 $CO bench-plan $D "$STS" $Q/fp8-old.plan
  step bench-fp8-kernels-$n 90 $C bench-plan $D "$STS" $Q/fp8-old.plan
  step bench-fp8-both-$n 120 $C bench-plan $D "$STS" $Q/fp8-new.plan $R
done
step info-fp16-new 20 $E info --plan $Q/fp16-new.plan
step info-fp8-new 20 $E info --plan $Q/fp8-new.plan
step peer-fp16 150 python3 $G/peer_torch.py $D "$STS"
step peer-fp8 150 python3 bench/gpu/peer_torch_fp8.py $D "$STS"
python3 -c 'import sys; sys.path.insert(0, "bench/gpu"); from bench_log import bias_ladder_summary; bias_ladder_summary(sys.argv[1], ("peer-fp16", "peer-fp8"))' "$O" | tee "$O/summary.txt"
[ -n "${OUT:-}" ] && tar czf "$OUT/bl2.tgz" -C /tmp bl2 && cp "$O/summary.txt" "$OUT/"
exit 0
