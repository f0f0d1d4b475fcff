#!/bin/bash
# ncu on single kernels of the W1 batch (256 x 128) and the W3 sentence (16 tokens) of an
# MPNet-base fp16 plan: duration, throughput, occupancy, warp stalls.
# Usage: profile_kernels.sh PLAN OUTDIR [KERNEL_REGEX] [LAUNCH_SKIP] [LAUNCH_COUNT]
set -uo pipefail
PLAN=${1:-/tmp/plans/mpnet-fp16.plan}
O=${2:-${OUT:-/tmp/out}}
RE=${3:-.}
SKIP=${4:-120}
COUNT=${5:-12}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "no ncu on this machine"; exit 0; }
timeout 240 "$NCU" --clock-control none --kernel-name "regex:$RE" --launch-skip "$SKIP" --launch-count "$COUNT" \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section MemoryWorkloadAnalysis \
  .gpu/embedrt-gpu-check profile "$PLAN" > "$O/ncu.txt" 2>&1
grep -E '^  [a-zA-Z_].*\(|Duration|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued' "$O/ncu.txt" | head -150
