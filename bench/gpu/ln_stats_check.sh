#!/bin/bash
# One device call (~4 minutes), run 28's third: small_layernorm=stats (attn-out / FFN-out add
# each row's sum and sum of squares into a buffer; the next small kernel normalizes its x
# fragments as it loads them: no ticket tail, no prologue) against the ticket (default), for
# W3 (issue 14's <= 0.30 ms) and the small-token path's accuracy:
#   part 1, MPNet-base fp16 plan (no flag): the 96 mixed-length texts embedded one at a time
#           (every text of <= 64 tokens takes the small-token kernels) with each, min cosine;
#   part 2, MiniLM (real weights) `parity` with stats: single-sentence cosine to fp32, STS-B;
#   part 3, bench-plan against the fp32 plan: ticket / stats, twice each interleaved, for the
#           fp16 and the fp8 plan (both with no flag: the defaults' second sample).
# Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh); device call with carry [".gpu"]:
#   bash bench/gpu/ln_stats_check.sh
set -uo pipefail
O=/tmp/lns; BUDGET=${BUDGET:-360}
source "$(dirname "$0")/steps.sh"
mpnet_model
mpnet_plan fp32 60
mpnet_plan fp16 60
python3 bench/gpu/mixed_texts.py "$O/mixed.jsonl"
for v in ticket stats; do
  step embed1-$v 90 env EMBEDRT_SMALL_LAYERNORM=$v $E embed --plan $Q/fp16.plan --input $O/mixed.jsonl \
    --batch-size 1 --output $O/emb1-$v.jsonl
done
step embed1-fp32 90 $E embed --plan $Q/fp32.plan --input $O/mixed.jsonl --batch-size 1 --output $O/emb1-fp32.jsonl
step minilm-parity-stats 90 env EMBEDRT_SMALL_LAYERNORM=stats $C parity $G/minilm "$STS"
mpnet_fp8_plan 60
for v in ticket-1 stats-1 ticket-2 stats-2; do
  step bench-fp16-$v 60 env EMBEDRT_SMALL_LAYERNORM=${v%-*} $C bench-plan $D "$STS" $Q/fp16.plan $Q/fp32.plan
  step bench-fp8-$v 60 env EMBEDRT_SMALL_LAYERNORM=${v%-*} $C bench-plan $D "$STS" $Q/fp8.plan $Q/fp32.plan
done
python3 - "$O" <<'PY' | tee "$O/summary.txt"
import json, math, os, sys
sys.path.insert(0, "bench/gpu")
from bench_log import merged, report
d = sys.argv[1]
print(open(os.path.join(d, "steps.txt")).read())
def embs(v):
    p = os.path.join(d, f"emb1-{v}.jsonl")
    return {r["index"]: r["embedding"] for r in map(json.loads, open(p))} if os.path.exists(p) else {}
def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
ref, tk, st = embs("fp32"), embs("ticket"), embs("stats")
if ref and tk and st:
    print("one text at a time, min cos: ticket vs fp32 %.7f, stats vs fp32 %.7f, stats vs ticket %.7f" % (
        min(cos(tk[i], ref[i]) for i in ref), min(cos(st[i], ref[i]) for i in ref),
        min(cos(st[i], tk[i]) for i in tk)))
r = merged(os.path.join(d, "minilm-parity-stats.log"))
print("minilm parity (stats)", {k: v for k, v in r.items() if "cos" in k or "spearman" in k})
for f in sorted(os.listdir(d)):
    if f.startswith("bench-") and f.endswith(".log"):
        print(report(f[6:-4], merged(os.path.join(d, f))))
PY
if [ -n "${OUT:-}" ]; then
  rm -f $O/emb1-*.jsonl
  tar czf "$OUT/ln-stats.tgz" -C /tmp lns
  cp "$O/summary.txt" "$OUT/"
fi
exit 0
