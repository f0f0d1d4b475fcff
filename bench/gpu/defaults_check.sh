#!/bin/bash
# One device call (~5 minutes), run 28's second: the defaults chosen from its first call
# (bench/gpu/fp16_levers.sh) against what they replace, and large batches one at a time.
#   part 1, fp16 MPNet-base plan built with no flag (now GELU's tanh form in cuBLASLt's
#           FFN-in epilogue; attention_tc_short for short batches, launched plainly):
#           bench/gpu/fp16_variants.sh parity on mixed lengths 1..512 against tc-static and
#           large_batches=serial;
#   part 2, bench-plan against the fp32 plan, twice each, interleaved: the default,
#           large_batches=serial (large batches' kernels wait for the previous large
#           batch's, whichever slot), tc-static; the plan built with --gelu exact;
#   part 3, MiniLM (real weights) `parity`: its fp16 plan now takes the tanh GELU;
#   part 4, the fp8 plan with no flag: default, serial, tc-static, twice each.
# Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh); device call with carry [".gpu"]:
#   bash bench/gpu/defaults_check.sh
set -uo pipefail
RESULTS=${OUT:-}
mkdir -p /tmp/def-fp16
OUT=/tmp/def-fp16 VARIANTS="default tc-static EMBEDRT_LARGE_BATCHES=serial" \
  bash bench/gpu/fp16_variants.sh | tee /tmp/def-fp16/summary.txt
O=/tmp/def; BUDGET=${BUDGET:-420}
source "$(dirname "$0")/steps.sh"
mpnet_plan fp32 60
mpnet_plan fp16 60
step build-fp16-exact 60 $E build --model $D --precision fp16 --gelu exact --profile $P $TOK -o $Q/fp16-exact.plan
step info-fp16 20 $E info --plan $Q/fp16.plan
run_variant() { # run_variant PREFIX PLAN NAME: bench-plan with NAME's engine options
  local prefix=$1 plan=$2 v=$3
  case ${v%-*} in
    default) set -- ;;
    serial) set -- EMBEDRT_LARGE_BATCHES=serial ;;
    tc-static) set -- EMBEDRT_ATTENTION=tc-static ;;
  esac
  step bench-$prefix-$v 60 env "$@" $C bench-plan $D "$STS" $plan $Q/fp32.plan
}
for v in default-1 serial-1 tc-static-1 default-2 serial-2 tc-static-2; do
  run_variant fp16 $Q/fp16.plan $v
done
for v in default-1 serial-1; do run_variant fp16exact $Q/fp16-exact.plan $v; done
step minilm-parity 90 $C parity $G/minilm "$STS"
mpnet_fp8_plan 60
for v in default-1 serial-1 tc-static-1 default-2 serial-2 tc-static-2; do
  run_variant fp8 $Q/fp8.plan $v
done
python3 - "$O" <<'PY' | tee "$O/summary.txt"
import os, sys
sys.path.insert(0, "bench/gpu")
from bench_log import merged, report
d = sys.argv[1]
print(open(os.path.join(d, "steps.txt")).read())
print(open(os.path.join(d, "info-fp16.log")).read())
for m in ("build-fp16", "build-fp16-exact"):
    print(m, {k: v for k, v in merged(os.path.join(d, f"{m}.log")).items() if k in ("gelu", "seconds")})
r = merged(os.path.join(d, "minilm-parity.log"))
print("minilm parity", {k: v for k, v in r.items() if "cos" in k or "spearman" in k})
for f in sorted(os.listdir(d)):
    if f.startswith("bench-") and f.endswith(".log"):
        print(report(f[6:-4], merged(os.path.join(d, f))))
PY
if [ -n "$RESULTS" ]; then
  rm -f /tmp/def-fp16/emb-*.jsonl
  tar czf "$RESULTS/defaults.tgz" -C /tmp def-fp16 def
  cat /tmp/def-fp16/summary.txt "$O/summary.txt" > "$RESULTS/summary.txt"
fi
exit 0
