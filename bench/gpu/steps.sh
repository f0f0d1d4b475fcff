# Sourced by the device scripts that run many independent steps (quant.sh,
# quant_fast.sh): unpacks the binaries carried in .gpu/ and defines `step`.
# Set before sourcing: O (the results folder) and BUDGET (seconds; later steps
# are skipped, and say so, past it). Defines G, E, C, STS.
G=.gpu
rm -rf "$O"; mkdir -p "$O" /tmp/qplans
export EMBEDRT_KERNEL_CACHE=/tmp/embedrt-kernels PYTHONUNBUFFERED=1
(cd $G && gunzip -f embedrt.gz embedrt-gpu-check.gz 2>/dev/null; chmod +x embedrt embedrt-gpu-check)
E=$G/embedrt; C=$G/embedrt-gpu-check; STS=$G/stsb-en-dev.csv
step() { # step NAME TIMEOUT CMD...: runs CMD, stdout+stderr to $O/NAME.log, never stops the script
  local name=$1 t=$2; shift 2
  local s=$SECONDS
  if [ $SECONDS -gt $BUDGET ]; then echo "$name skipped (time budget)" | tee -a "$O/steps.txt"; return 0; fi
  [ $((SECONDS + t)) -gt $((BUDGET + 20)) ] && t=$((BUDGET + 20 - SECONDS))
  timeout "$t" "$@" > "$O/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - s))s" | tee -a "$O/steps.txt"
  [ $rc = 0 ] || tail -3 "$O/$name.log"
  return 0
}
# MPNet-base with random weights (make_mpnet.py) and its plans at the serving profile; D, Q, P,
# TOK keep a value the script set before sourcing this file.
: "${D:=/tmp/mpnet}" "${Q:=/tmp/qplans}" "${P:=1x8:256x128:1024x512}" "${TOK:=--max-batch-tokens 32768}"
mpnet_model() { [ -d "$D" ] || step make-mpnet 150 python3 $G/make_mpnet.py $D $G/tokenizer.json; }
mpnet_plan() { # mpnet_plan fp16|fp32 [TIMEOUT]: step build-PREC, the plan in $Q/PREC.plan
  step build-$1 "${2:-150}" $E build --model $D --precision $1 --profile $P $TOK -o $Q/$1.plan
}
mpnet_fp8_plan() { # mpnet_fp8_plan [TIMEOUT]: a 512-sentence table with no fallback search (a random
  # model's search is slow on a CPU), $Q/t.table.json, then its plan, $Q/fp8.plan
  step calibrate 60 $E calibrate --model $D --input "$STS" --precision fp8 \
    --calibration-size 512 --no-fallback -o $Q/t.table.json
  step build-fp8 "${1:-120}" $E build --model $D --precision fp8 --profile $P $TOK --calibration-table $Q/t.table.json -o $Q/fp8.plan
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$O/gpu.txt"
