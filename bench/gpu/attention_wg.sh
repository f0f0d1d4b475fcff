#!/bin/bash
# One device call (~6 minutes): Hopper's wgmma attention (`attention_wg`, EMBEDRT_ATTENTION=wg)
# against the default tensor-core attention (`tc`), with the binary before it (.gpu/old/,
# 6548111) for the refactored attention_tc. MPNet-base random weights, profile
# 1x8:256x128:1024x512, 32k-token budget, fp16 and fp8 plans. Parity on mixed lengths 1..512
# (wg against tc on the same plan; new tc against old tc; against the fp32 plan), then
# bench-plan interleaved (tc, wg) twice per precision, ncu on one W1 attention launch of each
# kernel, PyTorch fp16 and fp8 peers in the same call.
# Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh) and .gpu/old/; carry [".gpu"]:
#   bash bench/gpu/attention_wg.sh
set -uo pipefail
O=/tmp/awg; BUDGET=${BUDGET:-540}
source "$(dirname "$0")/steps.sh"
(cd $G/old && gunzip -f embedrt.gz embedrt-gpu-check.gz 2>/dev/null; chmod +x embedrt embedrt-gpu-check)
EO=$G/old/embedrt
mpnet_model
mpnet_plan fp16 150
mpnet_plan fp32 90
mpnet_fp8_plan 120
python3 bench/gpu/mixed_texts.py "$O/mixed.jsonl"
emb() { # emb TAG ATTENTION BINARY PLAN
  step embed-$1 120 env EMBEDRT_ATTENTION=$2 $3 embed --plan $4 --input "$O/mixed.jsonl" --batch-size 32 --output "$O/emb-$1.jsonl"
}
for p in fp16 fp8; do
  emb $p-tc tc $E $Q/$p.plan
  emb $p-wg wg $E $Q/$p.plan
  emb $p-tc-old tc $EO $Q/$p.plan
done
emb fp32 tc $E $Q/fp32.plan
for n in 1 2; do
  for p in fp16 fp8; do
    [ $n = 1 ] && R=$Q/fp32.plan || R=
    step bench-$p-tc-$n 120 env EMBEDRT_ATTENTION=tc $C bench-plan $D "$STS" $Q/$p.plan $R
    step bench-$p-wg-$n 120 env EMBEDRT_ATTENTION=wg $C bench-plan $D "$STS" $Q/$p.plan $R
  done
done
for a in tc wg; do
  mkdir -p "$O/ncu-$a"
  step ncu-$a 120 env EMBEDRT_ATTENTION=$a bash bench/gpu/profile_kernels.sh $Q/fp16.plan "$O/ncu-$a" "attention_(tc|wg)$" 12 1
done
step peer-fp16 150 python3 $G/peer_torch.py $D "$STS"
step peer-fp8 150 python3 bench/gpu/peer_torch_fp8.py $D "$STS"
python3 - "$O" <<'PY' | tee "$O/summary.txt"
import sys
sys.path.insert(0, "bench/gpu")
from bench_log import parity_bench_summary
tags = ("fp16-tc", "fp16-wg", "fp16-tc-old", "fp8-tc", "fp8-wg", "fp8-tc-old", "fp32")
pairs = (("fp16-wg", "fp16-tc"), ("fp16-tc", "fp16-tc-old"), ("fp16-wg", "fp32"), ("fp16-tc", "fp32"),
         ("fp8-wg", "fp8-tc"), ("fp8-tc", "fp8-tc-old"), ("fp8-wg", "fp32"), ("fp8-tc", "fp32"))
parity_bench_summary(sys.argv[1], tags, pairs, ("peer-fp16", "peer-fp8"))
PY
for a in tc wg; do echo "== ncu $a"; grep -E "Duration|DRAM Throughput|L2 Cache Throughput|Compute \(SM\)|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Memory Throughput|Issue Slots|Executed Ipc" "$O/ncu-$a/ncu.txt" | head -14; grep -iE "stall|bottleneck|bound" "$O/ncu-$a/ncu.txt" | head -5 | cut -c1-240; done | tee -a "$O/summary.txt"
[ -n "${OUT:-}" ] && tar czf "$OUT/awg.tgz" --exclude="emb-*.jsonl" -C /tmp awg && cp "$O/summary.txt" "$OUT/"
exit 0
