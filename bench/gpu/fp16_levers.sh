#!/bin/bash
# One device call (~5 minutes), issue 14's fp16 W2/W1 and issue 11's fp8 W2 (run 28):
#   part 1, fp16 MPNet-base: bench/gpu/fp16_variants.sh with the default, `short-plain`
#           (attention_tc_short in the float loop, its launch plain: does the early launch
#           cost run 27's loss?), every launch plain (EMBEDRT_EARLY_LAUNCH=0: the short kernel
#           then runs too) and cuBLASLt's tanh-GELU FFN-in epilogue (EMBEDRT_GELU=tanh, the
#           GELU pass gone); parity of each against the default on mixed lengths 1..512;
#   part 2, the same variants again through bench-plan against the fp32 plan (cosine over
#           STS-B dev, W2's engine calls alone with their stages): a second sample each;
#   part 3, MiniLM (real weights) `parity` with the tanh GELU: STS-B dev Spearman, cosine to
#           fp32;
#   part 4, the fp8 plan with no flag: default (attention_tc_short in the 8-bit loop) against
#           tc-static twice, interleaved (run 27's 207.5k was one sample), and short-plain
#           (it changes the plan's single-sentence path, W3).
# `short-plain` was an attention option at the commit this ran at; run 28 made its behaviour
# part of `tc` (the default) and removed the name.
# Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh); device call with carry [".gpu"]:
#   bash bench/gpu/fp16_levers.sh
set -uo pipefail
RESULTS=${OUT:-}
mkdir -p /tmp/lev-fp16
OUT=/tmp/lev-fp16 VARIANTS="default short-plain EMBEDRT_EARLY_LAUNCH=0 EMBEDRT_GELU=tanh" \
  bash bench/gpu/fp16_variants.sh | tee /tmp/lev-fp16/summary.txt
O=/tmp/lev; BUDGET=${BUDGET:-400}
source "$(dirname "$0")/steps.sh"
F16=/tmp/mpnet-fp16.plan
mpnet_plan fp32 60
for v in default short-plain early-off tanh tanh+short-plain; do
  case $v in
    default) set -- ;;
    short-plain) set -- EMBEDRT_ATTENTION=short-plain ;;
    early-off) set -- EMBEDRT_EARLY_LAUNCH=0 ;;
    tanh) set -- EMBEDRT_GELU=tanh ;;
    tanh+short-plain) set -- EMBEDRT_GELU=tanh EMBEDRT_ATTENTION=short-plain ;;
  esac
  step bench-fp16-$v 60 env "$@" $C bench-plan $D "$STS" $F16 $Q/fp32.plan
done
step minilm-parity-tanh 90 env EMBEDRT_GELU=tanh $C parity $G/minilm "$STS"
step minilm-parity-default 90 $C parity $G/minilm "$STS"
mpnet_fp8_plan 60
for a in tc-1 tc-static-1 tc-2 tc-static-2 short-plain-1; do
  step bench-fp8-$a 60 env EMBEDRT_ATTENTION=${a%-*} $C bench-plan $D "$STS" $Q/fp8.plan $Q/fp32.plan
done
python3 - "$O" <<'PY' | tee "$O/summary.txt"
import os, sys
sys.path.insert(0, "bench/gpu")
from bench_log import merged, report
d = sys.argv[1]
print(open(os.path.join(d, "steps.txt")).read())
for m in ("minilm-parity-tanh", "minilm-parity-default"):
    r = merged(os.path.join(d, f"{m}.log"))
    print(m, {k: v for k, v in r.items() if "cos" in k or "spearman" in k})
for f in sorted(os.listdir(d)):
    if f.startswith("bench-") and f.endswith(".log"):
        print(report(f[6:-4], merged(os.path.join(d, f))))
PY
if [ -n "$RESULTS" ]; then
  rm -f /tmp/lev-fp16/emb-*.jsonl
  tar czf "$RESULTS/fp16-levers.tgz" -C /tmp lev-fp16 lev
  cat /tmp/lev-fp16/summary.txt "$O/summary.txt" > "$RESULTS/summary.txt"
fi
exit 0
