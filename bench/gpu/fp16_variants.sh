#!/bin/bash
# Issue 14 item 2 (engine variants) on the H200, one device call (~2-3 minutes): the fp16
# MPNet-base plan with each variant (VARIANTS: `default`, an attention kernel name for
# EMBEDRT_ATTENTION = tc2, tc4, or any VAR=VALUE such as EMBEDRT_EARLY_LAUNCH=0), parity of
# each variant against the default on mixed lengths (1..512 tokens, cosine of every embedding,
# must be >= 0.99999), then W1/W2/W3 and the W1 per-stage attention time through
# `embedrt-gpu-check bench-plan`. Compact table at the end.
# Binaries come prebuilt in .gpu/ (bench/gpu/prepare_carry.sh); run from the checkout root:
#   bash bench/gpu/fp16_variants.sh          (device tool, carry [".gpu"])
set -uo pipefail
G=.gpu; E=$G/embedrt; C=$G/embedrt-gpu-check; STS=$G/stsb-en-dev.csv
O=${OUT:-/tmp/fp16_variants}; mkdir -p "$O"
VARIANTS=${VARIANTS:-"default tc2 tc4"}
cd $G && gunzip -f embedrt.gz embedrt-gpu-check.gz 2>/dev/null; chmod +x embedrt embedrt-gpu-check; cd ..
export EMBEDRT_KERNEL_CACHE=/tmp/embedrt-kernels PYTHONUNBUFFERED=1
[ -d /tmp/mpnet ] || timeout 200 python3 $G/make_mpnet.py /tmp/mpnet $G/tokenizer.json > /dev/null 2>&1
P=/tmp/mpnet-fp16.plan
[ -f $P ] || timeout 200 $E build --model /tmp/mpnet --precision fp16 --profile 1x8:256x128:1024x512 -o $P > "$O/build.log" 2>&1 \
  || { echo "build failed:"; tail -3 "$O/build.log"; exit 1; }

python3 bench/gpu/mixed_texts.py "$O/mixed.jsonl"

TAGS=""
for v in $VARIANTS; do
  case $v in default) set -- ;; *=*) set -- "$v" ;; *) set -- "EMBEDRT_ATTENTION=$v" ;; esac
  tag=${v//=/-}; TAGS="$TAGS $tag"
  env "$@" timeout 120 $E embed --plan $P --input "$O/mixed.jsonl" --batch-size 32 --output "$O/emb-$tag.jsonl" > "$O/embed-$tag.log" 2>&1 \
    || { echo "$v: embed failed:"; tail -2 "$O/embed-$tag.log"; }
  env "$@" timeout 150 $C bench-plan /tmp/mpnet $STS $P > "$O/bench-$tag.json" 2> "$O/bench-$tag.err" \
    || { echo "$v: bench-plan failed:"; tail -2 "$O/bench-$tag.err"; }
done

# shellcheck disable=SC2086
python3 - "$O" $TAGS <<'EOF'
import json, math, os, sys
out, variants = sys.argv[1], sys.argv[2:]
def embs(v):
    p = os.path.join(out, f"emb-{v}.jsonl")
    if not os.path.exists(p):
        return None
    rows = [json.loads(l) for l in open(p) if l.strip()]
    return {r["index"]: r["embedding"] for r in rows}
def cos(a, b):
    d = sum(x * y for x, y in zip(a, b))
    return d / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) or 1.0)
def attention_ms(rec):
    return sum(ms for name, ms in rec.get("stages_w1_ms", []) if name == "attention")
ref = embs("default")
print(f"{'variant':22} {'min cos vs default':>18} {'parity':>6} {'W1 seq/s':>9} {'W1 call ms':>10} "
      f"{'W1 attention ms':>15} {'W2 sent/s':>9} {'W3 p50 ms':>9} {'W3 p99 ms':>9}")
for v in variants:
    e = embs(v)
    c = min((cos(e[i], ref[i]) for i in ref), default=float("nan")) if e and ref and e.keys() == ref.keys() else float("nan")
    ok = "ok" if c >= 0.99999 else "FAIL"
    try:
        rec = json.loads(open(os.path.join(out, f"bench-{v}.json")).read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        rec = {}
    g = lambda k: rec.get(k, float("nan"))
    print(f"{v:22} {c:18.7f} {ok:>6} {g('w1_seq_per_s'):9.0f} {g('w1_engine_call_ms'):10.2f} "
          f"{attention_ms(rec):15.3f} {g('w2_sent_per_s'):9.0f} {g('w3_p50_ms'):9.3f} {g('w3_p99_ms'):9.3f}")
EOF
