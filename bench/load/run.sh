#!/usr/bin/env bash
# End-to-end HTTP throughput of `embedrt serve` against the engine alone on
# the same sentences.
#
#   bench/load/run.sh MODEL [DEVICE]
#
# Environment:
#   BIN           the binary (target/release/embedrt)
#   INPUT         an STS CSV or JSON lines (../shared/data/stsb/stsb-en-dev.csv)
#   CONCURRENCIES closed-loop clients per step ("1 4 16 64")
#   DURATION      measured seconds per step (20)
#   BATCH         sentences per request (1)
#   ROUTE         embed | openai (embed)
#   PROCESSES     client processes (0: min(4, concurrency); raise it on a GPU
#                 machine so the client keeps up)
#   ENGINE_BATCH  engine-alone batch size (64)
#   REPEAT        engine-alone passes (3)
#   ROUNDS        engine-alone + HTTP sweeps, alternated so both see the same
#                 background load (1)
#   SERVE_ARGS, BENCH_ARGS  extra flags (e.g. precision)
#   PORT          (18080)
#   OUT           results file, JSON lines (stdout only)
#
# Prints one JSON line for the engine alone ("kind": "engine") and one per
# concurrency ("kind": "http"); the server's log goes to $OUT.server.log or
# /tmp/embedrt-load-server.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:?usage: bench/load/run.sh MODEL [DEVICE]}
DEVICE=${2:-cpu}
BIN=${BIN:-target/release/embedrt}
INPUT=${INPUT:-../shared/data/stsb/stsb-en-dev.csv}
CONCURRENCIES=${CONCURRENCIES:-1 4 16 64}
DURATION=${DURATION:-20}
BATCH=${BATCH:-1}
ROUTE=${ROUTE:-embed}
PORT=${PORT:-18080}
OUT=${OUT:-/dev/null}
LOG=${OUT/#\/dev\/null//tmp/embedrt-load-server}.server.log
PY=${PYTHON:-python3}

emit() { echo "$1"; echo "$1" >> "$OUT"; }

# The engine alone: `embedrt bench` (tokenization excluded from its clock).
# Its CPU per sentence is the CPU-time difference between REPEAT passes and
# one pass, so loading and warm-up cancel out.
engine_alone() {
    local t1 tr out
    t1=$( { /usr/bin/time -f "%U %S" "$BIN" bench --model "$MODEL" --device "$DEVICE" --input "$INPUT" \
        --batch-size "${ENGINE_BATCH:-64}" --repeat 1 ${BENCH_ARGS:-} > /dev/null; } 2>&1 | tail -1)
    out=$( { /usr/bin/time -o /tmp/embedrt-load-time -f "%U %S" "$BIN" bench --model "$MODEL" --device "$DEVICE" \
        --input "$INPUT" --batch-size "${ENGINE_BATCH:-64}" --repeat "${REPEAT:-3}" ${BENCH_ARGS:-}; } 2>/dev/null)
    tr=$(tail -1 /tmp/embedrt-load-time)
    emit "$($PY -c '
import json, sys
d = json.loads(sys.argv[1]); c1 = sum(map(float, sys.argv[2].split())); cr = sum(map(float, sys.argv[3].split()))
per_pass = d["sentences"] / int(sys.argv[4])
d["kind"] = "engine"
if int(sys.argv[4]) > 1:
    d["cpu_ms_per_sentence"] = 1000 * (cr - c1) / (per_pass * (int(sys.argv[4]) - 1))
print(json.dumps(d))' "$out" "$t1" "$tr" "${REPEAT:-3}")"
}

"$BIN" serve --model "$MODEL" --device "$DEVICE" --host 127.0.0.1 --port "$PORT" \
    --max-concurrent-requests 4096 ${SERVE_ARGS:-} > "$LOG" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
    if $PY -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/ready', timeout=2)" 2>/dev/null; then
        break
    fi
    kill -0 $SERVER 2>/dev/null || { cat "$LOG" >&2; exit 1; }
    sleep 0.5
done
info=$($PY -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$PORT/info').read().decode())")
for round in $(seq 1 "${ROUNDS:-1}"); do
    engine_alone
    for c in $CONCURRENCIES; do
        line=$($PY bench/load/load_client.py --url "http://127.0.0.1:$PORT" --input "$INPUT" \
            --concurrency "$c" --duration "$DURATION" --batch "$BATCH" --route "$ROUTE" --processes "${PROCESSES:-0}" || true)
        emit "$($PY -c 'import json,sys; d=json.loads(sys.argv[1]); i=json.loads(sys.argv[2]); d.update(kind="http", round=int(sys.argv[3]), device=i["device"], precision=i["precision"], max_batch_tokens=i["max_batch_tokens"]); print(json.dumps(d))' "$line" "$info" "$round")"
    done
done
