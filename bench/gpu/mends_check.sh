#!/bin/bash
# A short device call (~1.5 minutes) after run 28's review mends: the fp16 small-token kernels
# now take the 8-bit kernels' argument list (w_scale unused), so MiniLM `parity` (fp16 one
# sentence at a time through them, against fp32 and the CPU engine; STS-B) is rerun; and
# ffn_gemm=own on a tanh-GELU plan must refuse with one line.
# Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh); device call with carry [".gpu"]:
#   bash bench/gpu/mends_check.sh
set -uo pipefail
O=/tmp/mends; BUDGET=${BUDGET:-150}; Q=/tmp/qplans
source "$(dirname "$0")/steps.sh"
step minilm-parity 90 $C parity $G/minilm "$STS"
step build-minilm-fp16 60 $E build --model $G/minilm --precision fp16 -o $Q/minilm.plan
printf '{"text": "a sentence"}\n' > $O/one.jsonl
step own-on-tanh 30 env EMBEDRT_FFN_GEMM=own $E embed --plan $Q/minilm.plan --input $O/one.jsonl
python3 - "$O" <<'PY' | tee "$O/summary.txt"
import os, sys
sys.path.insert(0, "bench/gpu")
from bench_log import merged
d = sys.argv[1]
print(open(os.path.join(d, "steps.txt")).read())
r = merged(os.path.join(d, "minilm-parity.log"))
print("minilm parity", {k: v for k, v in r.items() if "cos" in k or "spearman" in k})
print("own-on-tanh stderr:", open(os.path.join(d, "own-on-tanh.log")).read().strip()[-400:])
PY
[ -n "${OUT:-}" ] && tar czf "$OUT/mends.tgz" -C /tmp mends && cp "$O/summary.txt" "$OUT/"
exit 0
