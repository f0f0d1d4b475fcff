#!/bin/bash
# One short device call (~3 minutes): W2 with one execution slot against two, for
# attention_tc and attention_tc_pipe. Run 27 measured W2's engine calls one at a time 4-7%
# faster with pipe, but the two-slot job (two batches in flight) slower for the fp8 plan:
# does the second slot help at all once W2 is GPU-bound, and does it hurt pipe?
# MPNet-base random weights, profile 1x8:256x128:1024x512, 32k-token budget; fp16 and fp8
# (no flag) plans; bench-plan (W1/W2/W3, W2's calls alone) for each (kernel, slots).
# Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh); device call with carry [".gpu"]:
#   bash bench/gpu/attention_pipe_slots.sh
set -uo pipefail
O=/tmp/att-slots; BUDGET=${BUDGET:-240}
source "$(dirname "$0")/steps.sh"
mpnet_model
mpnet_fp8_plan 60
mpnet_plan fp16 60
for p in fp8 fp16; do
  for a in tc pipe; do
    for s in 1 2; do
      step bench-$p-$a-s$s 60 env EMBEDRT_ATTENTION=$a EMBEDRT_CUDA_SLOTS=$s $C bench-plan $D "$STS" $Q/$p.plan
    done
  done
done
python3 - "$O" <<'PY' | tee "$O/summary.txt"
import os, sys
sys.path.insert(0, "bench/gpu")
from bench_log import merged
d = sys.argv[1]
print(open(os.path.join(d, "steps.txt")).read())
for p in ("fp8", "fp16"):
    for a in ("tc", "pipe"):
        for s in (1, 2):
            r = merged(os.path.join(d, f"bench-{p}-{a}-s{s}.log"))
            alone = sum(c["ms"] for c in r.get("w2_calls_alone", []))
            print(f"{p:5} {a:5} slots {s}: W1 {r.get('w1_seq_per_s', float('nan')):8.0f}  W2 {r.get('w2_sent_per_s', float('nan')):8.0f}"
                  f" ({r.get('w2_ms', float('nan')):.2f} ms; calls alone {alone:.2f} ms)  W3 {r.get('w3_p50_ms', float('nan')):.3f}")
PY
[ -n "${OUT:-}" ] && tar czf "$OUT/attention-slots.tgz" -C /tmp att-slots && cp "$O/summary.txt" "$OUT/"
exit 0
