#!/bin/bash
# The fifth 2026-12-02 session's device calls, one script (binaries prebuilt in .gpu/ by
# bench/gpu/prepare_carry.sh; carry [".gpu"]):
#   PART=gemm: issue 14's W1: our Hopper FFN-in GEMM (exact GELU fused) in clusters that
#              multicast the shared operand slices (ffn_gemm=own-c2: 2 x 1, own-c4: 2 x 2)
#              against the unclustered kernel (own) and cuBLASLt + the GELU pass (default):
#              gpu_check parity for each (a clustered kernel that hangs is cut at 60 s and the
#              rest of its checks skipped), then W1/W2/W3 with mixed-length parity
#              (fp16_variants.sh) and the W1 per-stage times.
set -uo pipefail
O=${OUT:-/tmp/out}
G=.gpu
mkdir -p "$O"
(cd $G && gunzip -f embedrt.gz embedrt-gpu-check.gz 2>/dev/null; chmod +x embedrt embedrt-gpu-check)
export EMBEDRT_KERNEL_CACHE=/tmp/embedrt-kernels PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw --format=csv,noheader | tee "$O/gpu.txt"
case "${PART:-gemm}" in
gemm)
  variants="default"
  for v in own own-c2 own-c4; do
    # A first short run: a deadlocked cluster kernel must not eat the call.
    line=$(timeout 60 $G/embedrt-gpu-check --engine ffn_gemm=$v parity $G/minilm $G/stsb-en-dev.csv 2>&1 | tail -1)
    echo "$v minilm $line" >> "$O/parity.txt"
    case "$line" in
      *'"pass":true'*) echo "ok   $v minilm"; variants="$variants EMBEDRT_FFN_GEMM=$v" ;;
      *) echo "FAIL $v minilm: ${line:0:300}" ;;
    esac
  done
  OUT=$O/variants VARIANTS="$variants" timeout 420 bash bench/gpu/fp16_variants.sh > "$O/variants.log" 2>&1
  tail -6 "$O/variants.log"
  python3 - "$O/variants" <<'PY'
import glob, json, os, sys
for p in sorted(glob.glob(os.path.join(sys.argv[1], "bench-*.json"))):
    try:
        rec = json.loads(open(p).read().strip().splitlines()[-1])
    except (ValueError, IndexError):
        continue
    stages = ", ".join(f"{n} {ms:.3f}" for n, ms in rec.get("stages_w1_ms", []))
    print(f"W1 stages ms, {os.path.basename(p)[6:-5]}: {stages}")
PY
  ;;
esac
