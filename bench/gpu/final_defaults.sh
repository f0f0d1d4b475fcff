#!/bin/bash
# One device call (~5 minutes), run 28's last: the defaults as committed (fp16 plan and fp8
# plan built with no flag, engine options unset), twice each, with the PyTorch peers (fp16
# eager / torch.compile, fp8 torch._scaled_mm) in the same call.
# Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh); device call with carry [".gpu"]:
#   bash bench/gpu/final_defaults.sh
set -uo pipefail
O=/tmp/fin; BUDGET=${BUDGET:-330}
source "$(dirname "$0")/steps.sh"
mpnet_model
mpnet_plan fp16 60
mpnet_fp8_plan 60
for n in 1 2; do
  step bench-fp16-$n 60 $C bench-plan $D "$STS" $Q/fp16.plan
  step bench-fp8-$n 90 $C bench-plan $D "$STS" $Q/fp8.plan
done
step peer-fp16 150 python3 $G/peer_torch.py $D "$STS"
step peer-fp8 150 python3 bench/gpu/peer_torch_fp8.py $D "$STS"
python3 - "$O" <<'PY' | tee "$O/summary.txt"
import os, sys
sys.path.insert(0, "bench/gpu")
from bench_log import merged, report
d = sys.argv[1]
print(open(os.path.join(d, "steps.txt")).read())
for f in sorted(os.listdir(d)):
    if f.startswith("bench-") and f.endswith(".log"):
        print(report(f[6:-4], merged(os.path.join(d, f))).splitlines()[0])
for p in ("peer-fp16", "peer-fp8"):
    print(p, merged(os.path.join(d, f"{p}.log")))
PY
[ -n "${OUT:-}" ] && tar czf "$OUT/final.tgz" -C /tmp fin && cp "$O/summary.txt" "$OUT/"
exit 0
