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
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$O/gpu.txt"
