#!/bin/bash
# One full `embedrt pipeline run` on the real MiniLM on the H200 (one device call, < 8 min):
# a day of 800 STS-B train rows, 300 training steps (batch 32) on the GPU, export + ONNX Runtime
# check, fp16 plan, gates (frozen benchmark = first 300 rows of STS-B dev), register, deploy to a
# live `embedrt serve --device cuda` through /admin/reload, canary. Results under $OUT:
# outcome.json (the last line), report.json, report.md, gates.svg, status.json, log.txt.
#
# Carry (prepare here): G=.gpu with the embedrt binary (bench/gpu/prepare_carry.sh), fp32 or fp16
# MiniLM in $G/minilm, $G/stsb-en-dev.csv and $G/stsb-en-train.csv, python/embedrt/train
# (tracked, travels), and wheels in .whl for what the H200's Python lacks: datasets and
# accelerate (+ pyarrow, dill, multiprocess, xxhash, fsspec, pandas as pip reports them).
# Device command:
#   gunzip -f .gpu/*.gz; chmod +x .gpu/embedrt; python3 -m pip install -q --no-index --no-deps \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; bash bench/gpu/pipeline_minilm.sh
set -uo pipefail
G=${G:-.gpu}
O=${OUT:-/tmp/out}
W=/tmp/pipeline-h200
rm -rf "$W"; mkdir -p "$O" "$W"
export EMBEDRT_KERNEL_CACHE=/tmp/embedrt-kernels
ROOT=$PWD
{
  python3 -c 'import datasets, accelerate, sentence_transformers, onnxruntime; print("python ok")' || exit 1
  sed -n 1600,2400p "$G/stsb-en-train.csv" > "$W/day.csv"
  PORT=18431
  "$G/embedrt" serve --model "$G/minilm" --device cuda --port $PORT > "$W/serve.log" 2>&1 &
  SERVE=$!
  for _ in $(seq 600); do curl -sf localhost:$PORT/ready >/dev/null && break; sleep 0.2; done
  cat > "$W/pipeline.toml" <<TOML
[model]
name = "all-MiniLM-L6-v2"
base = "$ROOT/$G/minilm"
[registry]
path = "$W/registry"
[train]
python = "$(command -v python3)"
scripts = "$ROOT/python/embedrt/train"
max_steps = 300
batch_size = 32
learning_rate = 2e-5
time_budget_s = 240
[gates]
frozen_benchmark = "$ROOT/$G/stsb-en-dev.csv"
frozen_rows = 300
frozen_epsilon = 1.0
held_out_epsilon = 1.0
engine_min_cosine = 0.999
throughput_margin = 0.2
[optimize]
device = "auto"
precisions = ["fp16"]
[[deploy]]
kind = "embedrt-serve"
url = "http://127.0.0.1:$PORT"
[canary]
min_cosine = 0.999
TOML
  /usr/bin/time -v "$G/embedrt" pipeline run --config "$W/pipeline.toml" --data "$W/day.csv" > "$O/outcome.json"
  echo "exit $?"; cat "$O/outcome.json"
  "$G/embedrt" pipeline status --config "$W/pipeline.toml" > "$O/status.json"
  run=$(ls "$W/registry/runs" | tail -1)
  cp "$W/registry/runs/$run/report.json" "$W/registry/runs/$run/report.md" "$W/registry/runs/$run/gates.svg" "$O/" 2>/dev/null
  kill $SERVE; wait $SERVE
  tail -5 "$W/serve.log"
} 2>&1 | tee "$O/log.txt"
