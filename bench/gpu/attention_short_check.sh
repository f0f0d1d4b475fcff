#!/bin/bash
# A short device call (~1.5 minutes): the fp8 MPNet-base plan (no flag) with the default
# attention (attention_tc_short for short batches in the 8-bit loop) against tc-static
# (attention_tc for every batch): W1/W2/W3 and W2's calls alone, a second sample of run 27's
# fp8 W2 gain. Device call with carry [".gpu"]: bash bench/gpu/attention_short_check.sh
set -uo pipefail
O=/tmp/att-short; BUDGET=${BUDGET:-150}
source "$(dirname "$0")/steps.sh"
mpnet_model
mpnet_fp8_plan 60
for a in tc tc-static tc tc-static; do
  n=$((${n:-0} + 1))
  step bench-fp8-$a-$n 40 env EMBEDRT_ATTENTION=$a $C bench-plan $D "$STS" $Q/fp8.plan
done
python3 - "$O" <<'PY' | tee "$O/summary.txt"
import glob, os, sys
sys.path.insert(0, "bench/gpu")
from bench_log import merged
d = sys.argv[1]
for path in sorted(glob.glob(os.path.join(d, "bench-*.log"))):
    r = merged(path)
    alone = sum(c["ms"] for c in r.get("w2_calls_alone", []))
    print(f"{os.path.basename(path)[6:-4]:18} W1 {r.get('w1_seq_per_s', float('nan')):8.0f}  W2 {r.get('w2_sent_per_s', float('nan')):8.0f}"
          f" ({r.get('w2_ms', float('nan')):.2f} ms; calls alone {alone:.2f} ms)  W3 {r.get('w3_p50_ms', float('nan')):.3f}")
PY
[ -n "${OUT:-}" ] && tar czf "$OUT/attention-short.tgz" -C /tmp att-short && cp "$O/summary.txt" "$OUT/"
exit 0
