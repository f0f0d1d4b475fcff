#!/bin/bash
# The fifth 2026-12-02 session's device calls, one script (binaries prebuilt in .gpu/ by
# bench/gpu/prepare_carry.sh; carry [".gpu"]):
#   PART=gemm: issue 14's W1: our Hopper FFN-in GEMM (exact GELU fused) in clusters that
#              multicast the shared operand slices (ffn_gemm=own-c2: 2 x 1, own-c4: 2 x 2)
#              against the unclustered kernel (own) and cuBLASLt + the GELU pass (default):
#              gpu_check parity for each (a clustered kernel that hangs is cut at 60 s and the
#              rest of its checks skipped), then W1/W2/W3 with mixed-length parity
#              (fp16_variants.sh) and the W1 per-stage times.
#   PART=w3:   issue 14's W3 (and issue 11's): attention computed inside the attn-out kernel
#              for batches of <= 16 tokens (small_attention=fused, opt-in) against the
#              attention kernel on its own (separate, the default): gpu_check parity both ways, MPNet-base
#              one sentence at a time (1..15 words, the 16-token bucket) fused vs separate and
#              vs the fp32 plan, W1/W2/W3 with W3's stages, then an fp8 MPNet plan's W3 both
#              ways with its one-sentence cosine to fp32.
#   PART=ncu:  ncu on one W1-batch launch of our FFN-in GEMM, unclustered and in 2-CTA
#              clusters (speed of light, memory, warp stalls), for the per-kernel evidence.
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
  python3 bench/gpu/stages.py "$O/variants" w1
  ;;
w3)
  for v in fused separate; do
    for m in "$G/minilm $G/stsb-en-dev.csv" "tests/fixtures/tiny-mpnet-mean-norm"; do
      # shellcheck disable=SC2086
      line=$(timeout 120 $G/embedrt-gpu-check --engine small_attention=$v parity $m 2>&1 | tail -1)
      echo "$v ${m%% *} $line" >> "$O/parity.txt"
      case "$line" in *'"pass":true'*) echo "ok   $v ${m%% *}";; *) echo "FAIL $v ${m%% *}: ${line:0:300}";; esac
    done
  done
  D=/tmp/mpnet; E=$G/embedrt; C=$G/embedrt-gpu-check; P=1x8:256x128:1024x512; STS=$G/stsb-en-dev.csv
  [ -d $D ] || timeout 200 python3 $G/make_mpnet.py $D $G/tokenizer.json > /dev/null 2>&1
  timeout 100 $E build --model $D --precision fp16 --profile $P -o /tmp/mpnet-fp16.plan > "$O/build16.log" 2>&1
  timeout 100 $E build --model $D --precision fp32 --profile $P -o /tmp/mpnet-fp32.plan > "$O/build32.log" 2>&1
  python3 - "$O/short.jsonl" <<'PY'
import json, random, sys
r = random.Random(3)
words = "the a of to and in is it that for on with as was at by an be this are from".split()
with open(sys.argv[1], "w") as f:
    for i in range(48):
        f.write(json.dumps({"text": " ".join(r.choice(words) for _ in range(1 + i % 14))}) + "\n")
PY
  for v in fused separate; do
    EMBEDRT_SMALL_ATTENTION=$v timeout 60 $E embed --plan /tmp/mpnet-fp16.plan --input "$O/short.jsonl" \
      --batch-size 1 --output "$O/short-$v.jsonl" > "$O/short-$v.log" 2>&1 || tail -2 "$O/short-$v.log"
  done
  timeout 60 $E embed --plan /tmp/mpnet-fp32.plan --input "$O/short.jsonl" --batch-size 1 \
    --output "$O/short-fp32.jsonl" > "$O/short-fp32.log" 2>&1 || tail -2 "$O/short-fp32.log"
  python3 - "$O" <<'PY'
import json, math, os, sys
d = sys.argv[1]
def load(v):
    p = os.path.join(d, f"short-{v}.jsonl")
    return {r["index"]: r["embedding"] for r in map(json.loads, open(p))} if os.path.exists(p) else {}
def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
f, s, r = load("fused"), load("separate"), load("fp32")
for name, a, b in [("fused vs separate", f, s), ("fused vs fp32", f, r), ("separate vs fp32", s, r)]:
    c = [cos(a[i], b[i]) for i in a if i in b]
    print(f"MPNet-base one sentence at a time, {name}: n={len(c)} min cos {min(c, default=float('nan')):.7f}")
PY
  # (Run 24 ran this when fused was the default, as "default EMBEDRT_SMALL_ATTENTION=separate".)
  OUT=$O/variants VARIANTS="default EMBEDRT_SMALL_ATTENTION=fused" timeout 300 bash bench/gpu/fp16_variants.sh > "$O/variants.log" 2>&1
  tail -3 "$O/variants.log"
  python3 bench/gpu/stages.py "$O/variants" w3
  if [ $SECONDS -lt 330 ]; then
    timeout 60 $E calibrate --model $D --input "$STS" --precision fp8 --calibration-size 512 --no-fallback \
      -o /tmp/mpnet-fp8.table.json > "$O/cal8.log" 2>&1
    timeout 90 $E build --model $D --precision fp8 --profile $P --max-batch-tokens 32768 \
      --calibration-table /tmp/mpnet-fp8.table.json -o /tmp/mpnet-fp8.plan > "$O/build8.log" 2>&1
    for v in fused separate; do
      EMBEDRT_SMALL_ATTENTION=$v timeout 90 $C bench-plan $D "$STS" /tmp/mpnet-fp8.plan /tmp/mpnet-fp32.plan \
        > "$O/fp8-$v.json" 2> "$O/fp8-$v.err"
      python3 -c "import json,sys; r=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print(sys.argv[2], {k: round(r[k], 6) for k in ['single_cos_vs_reference_min','cos_vs_reference_min','w1_seq_per_s','w2_sent_per_s','w3_p50_ms','w3_p99_ms'] if k in r})" "$O/fp8-$v.json" "fp8 $v" 2>&1 | tail -1
    done
  else
    echo "fp8 part skipped (time)"
  fi
  ;;
ncu)
  D=/tmp/mpnet; P=/tmp/plans/mpnet-fp16.plan; mkdir -p /tmp/plans
  timeout 200 python3 $G/make_mpnet.py $D $G/tokenizer.json > /dev/null 2>&1
  timeout 100 $G/embedrt build --model $D --precision fp16 --profile 1x8:256x128:1024x512 -o $P > "$O/build.log" 2>&1
  for v in own own-c2; do
    mkdir -p "$O/$v"
    EMBEDRT_FFN_GEMM=$v timeout 150 bash bench/gpu/profile_kernels.sh $P "$O/$v" ffn_in_gelu 12 1 > /dev/null 2>&1
    echo "== $v"
    grep -E "Duration|DRAM Throughput|L2 Cache Throughput|L1/TEX Cache|Compute \(SM\)|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Mem Busy|Max Bandwidth|L2 Hit|Mem Pipes|Memory Throughput" "$O/$v/ncu.txt" | head -16
    grep -iE "stall|bottleneck|bound" "$O/$v/ncu.txt" | head -6 | cut -c1-220
  done
  ;;
esac
