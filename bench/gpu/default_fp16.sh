#!/bin/bash
# Issue 14 item 3 on the H200 (one device call, ~5 minutes): `embedrt serve --model MPNET_DIR`
# with no other flag must
#   1. print one `note: no --plan: built an fp16 plan for NVIDIA H200 (sm_90), cached at ...`,
#      report fp16 in /info and take <= 2 GiB of GPU memory (nvidia-smi, whole process) under
#      load (16 clients posting 32 STS-B sentences at a time);
#   2. on the second start print `note: no --plan: using the cached fp16 plan ...` and be ready
#      sooner;
#   3. run W1/W2/W3 within 3% of a large-workspace plan (`embedrt build --max-batch-tokens
#      131072`): `embedrt-gpu-check bench-plan` on the cached plan file and on that plan, and
#      `embedrt bench` W2 through `--model` (cached plan) and `--plan` (large plan);
#   4. a corrupted cached plan is rebuilt with a note, not an error; `--precision fp32` prints no
#      plan note and caches nothing.
# Binaries come prebuilt in .gpu/ (bench/gpu/prepare_carry.sh, run from this worktree), the
# MPNet-base model is made as bench/gpu/memory_budget.sh does. Each step logs to $O and may
# fail alone; a summary comes last.
# usage (device): [SERVE_ONLY=1] bash bench/gpu/default_fp16.sh; results in $OUT (default /tmp/out)
set -uo pipefail
G=.gpu
O=${OUT:-/tmp/out}/default_fp16
mkdir -p "$O"
(cd $G && gunzip -f embedrt.gz embedrt-gpu-check.gz 2>/dev/null; chmod +x embedrt embedrt-gpu-check)
E=$G/embedrt; C=$G/embedrt-gpu-check; STS=$G/stsb-en-dev.csv
export EMBEDRT_KERNEL_CACHE=/tmp/embedrt-kernels
export EMBEDRT_PLAN_CACHE=/tmp/plan-cache
rm -rf "$EMBEDRT_PLAN_CACHE"
M=/tmp/mpnet
[ -d $M ] || python3 $G/make_mpnet.py $M $G/tokenizer.json > "$O/make_mpnet.log" 2>&1
PORT=8090

# serve_once TAG [ARGS...]: starts `embedrt serve --model $M ARGS`, waits for /ready, puts load
# on it while sampling nvidia-smi, stops it. Writes $O/TAG.{log,info.json,mem.txt,ready_s}.
serve_once() {
  local tag=$1; shift
  local t0=$SECONDS
  $E serve --model $M --port $PORT "$@" > "$O/$tag.log" 2>&1 & local pid=$!
  for _ in $(seq 300); do curl -sf localhost:$PORT/ready > /dev/null && break; sleep 0.5; done
  echo $((SECONDS - t0)) > "$O/$tag.ready_s"
  curl -s localhost:$PORT/info > "$O/$tag.info.json"
  ( for _ in $(seq 60); do
      nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits
      sleep 0.5
    done ) > "$O/$tag.mem.txt" & local sampler=$!
  python3 - "$STS" $PORT > "$O/$tag.load.txt" 2>&1 <<'PY'
import csv, json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
rows = list(csv.reader(open(sys.argv[1])))
texts = [t for r in rows for t in r[:2]]
url = f"http://127.0.0.1:{sys.argv[2]}/embed"
def post(i):
    start = (i * 32) % (len(texts) - 32)  # 3,000 sentences: stay inside the list
    body = json.dumps({"inputs": texts[start:start + 32]}).encode()
    req = urllib.request.Request(url, body, {"content-type": "application/json"})
    return len(json.load(urllib.request.urlopen(req, timeout=60)))
t = time.time(); n = 0
with ThreadPoolExecutor(16) as pool:
    while time.time() - t < 20:
        n += sum(pool.map(post, range(n, n + 512)))
print(f"load: {n} sentences in {time.time() - t:.1f}s = {n / (time.time() - t):.0f} sent/s")
PY
  kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
  kill $pid; wait $pid 2>/dev/null
  local peak
  # The serve process's own row; if the container's pids differ from nvidia-smi's, the largest.
  peak=$(awk -F', ' -v p=$pid '$1 == p && $2 > m { m = $2 } $2 > a { a = $2 }
                                END { print (m > 0 ? m : a) + 0 }' "$O/$tag.mem.txt")
  echo "$tag: ready in $(cat "$O/$tag.ready_s")s, peak GPU memory ${peak} MiB (target <= 2048)," \
       "precision $(python3 -c "import json; print(json.load(open('$O/$tag.info.json')).get('precision'))" 2>/dev/null)," \
       "$(cat "$O/$tag.load.txt" | tail -1)" | tee -a "$O/summary.txt"
  grep '^note:' "$O/$tag.log" | tee -a "$O/summary.txt"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$O/summary.txt"
serve_once first            # builds, tunes and caches the fp16 plan
serve_once second           # reads it
ls -la "$EMBEDRT_PLAN_CACHE" | tee -a "$O/summary.txt"
$E info | tee -a "$O/summary.txt"
CACHED=$(ls "$EMBEDRT_PLAN_CACHE"/fp16-*.plan | head -1)
$E info --plan "$CACHED" | grep -E "profile|batch limits|workspace|device memory" | tee -a "$O/summary.txt"
# SERVE_ONLY=1: items 1 and 2 only (bench/gpu/closing_check.sh).
[ -n "${SERVE_ONLY:-}" ] && exit 0

# The large-workspace plan to compare with: same serving profile, 4x the token budget.
BIG=/tmp/mpnet-big.plan
$E build --model $M --precision fp16 --profile 1x8:256x128:1024x512 --max-batch-tokens 131072 \
  -o $BIG > "$O/build_big.log" 2>&1 || tail -2 "$O/build_big.log"
$E build --model $M --precision fp32 -o /tmp/mpnet-fp32.plan > "$O/build_fp32.log" 2>&1
for p in "$CACHED" $BIG; do
  echo "bench-plan $(basename "$p"): $(timeout 150 $C bench-plan $M "$STS" "$p" /tmp/mpnet-fp32.plan 2>&1 | tail -1)" \
    | tee -a "$O/summary.txt"
done
echo "W2 embedrt bench --model (cached default): $(timeout 120 $E bench --model $M --input "$STS" --batch-size 256 --repeat 5 2>"$O/bench_model.err" | tail -1)" | tee -a "$O/summary.txt"
grep '^note:' "$O/bench_model.err" | tee -a "$O/summary.txt"
echo "W2 embedrt bench --plan (large workspace): $(timeout 120 $E bench --plan $BIG --input "$STS" --batch-size 256 --repeat 5 2>/dev/null | tail -1)" | tee -a "$O/summary.txt"

# A corrupted cached plan: rebuilt with a note; then fp32: no plan note, nothing new cached.
python3 - "$CACHED" <<'PY'
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[len(b) // 2] ^= 0xff
open(p, "wb").write(b)
PY
echo '{"text": "a corrupted cache is rebuilt"}' | $E embed --model $M > /dev/null 2> "$O/corrupt.err"
echo "corrupted cache, rc=$?: $(grep '^note:\|^error:' "$O/corrupt.err")" | tee -a "$O/summary.txt"
before=$(ls "$EMBEDRT_PLAN_CACHE" | wc -l)
echo '{"text": "the exact path"}' | $E embed --model $M --precision fp32 > /dev/null 2> "$O/fp32.err"
echo "fp32, rc=$?: notes [$(grep '^note:' "$O/fp32.err")], cache files $before -> $(ls "$EMBEDRT_PLAN_CACHE" | wc -l)" \
  | tee -a "$O/summary.txt"
