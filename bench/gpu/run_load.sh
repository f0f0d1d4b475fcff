#!/bin/bash
# The server's GPU load benchmark (issue 6 item 8), run after run_all.sh in the same device call:
# the MPNet-base fp16 plan that run_all.sh built (/tmp/plans/mpnet-fp16.plan) served by
# `embedrt serve --plan`, closed-loop HTTP clients (bench/load/load_client.py) at several
# concurrencies, against the engine alone (`embedrt bench --plan`) on the same STS-B dev sentences.
# JSON lines to $OUT/load.jsonl; the server's log to $OUT/server.log.
set -uo pipefail
G=.gpu
O=${OUT:-/tmp/out}
PLAN=${PLAN:-/tmp/plans/mpnet-fp16.plan}
IN=$G/stsb-en-dev.csv
PORT=18080
DURATION=${DURATION:-6}
mkdir -p "$O"
emit() { echo "$1" | tee -a "$O/load.jsonl"; }
for b in 64 1024; do
  line=$($G/embedrt bench --plan "$PLAN" --input "$IN" --batch-size $b --repeat 5 2>/dev/null)
  emit "$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["kind"]="engine"; print(json.dumps(d))' "$line")"
done
$G/embedrt serve --plan "$PLAN" --host 127.0.0.1 --port $PORT --max-concurrent-requests 4096 \
  > "$O/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 240); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/ready', timeout=2)" 2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { echo "server died"; tail -5 "$O/server.log"; exit 1; }
  sleep 0.5
done
for spec in "1 1" "1 16" "1 64" "1 256" "32 16" "32 64" "32 256"; do
  set -- $spec
  line=$(python3 bench/load/load_client.py --url http://127.0.0.1:$PORT --input "$IN" --concurrency $2 \
    --duration "$DURATION" --warmup 1.5 --batch $1 --processes 12 2>&1 | tail -1)
  emit "$(python3 -c 'import json,sys
try: d=json.loads(sys.argv[1])
except ValueError: d={"error": sys.argv[1]}
d["kind"]="http"; print(json.dumps(d))' "$line")"
done
kill -TERM $SERVER; wait $SERVER 2>/dev/null
