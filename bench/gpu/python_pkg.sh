#!/bin/bash
# The Python package alone vs `embedrt bench` on the same fp16 plan (H200).
# Prepare here (not on the device): bench/gpu/prepare_carry.sh, then copy the wheel:
#   (cd python && ../.venv/bin/maturin build --release -o ../target/wheels)
#   cp target/wheels/embedrt-*-abi3-*.whl /work/main/.gpu/
# On the device (carry .gpu):
#   gunzip -f .gpu/*.gz && chmod +x .gpu/embedrt && bash .gpu/python_pkg.sh .gpu
# It builds the random MPNet-base of make_mpnet.py, an fp16 plan, then times
# Engine.embed over the 3,000 STS-B dev sentences (both sides of 1,500 pairs)
# against `embedrt bench --plan` on the same plan and input, and prints one
# summary line: `python_pkg: engine_embed S/s, embedrt_bench S/s, ratio R`.
# The wheel is abi3 (CPython >= 3.9) and loads CUDA the way the binary does
# (dlopen of libcuda.so.1, libcublasLt.so.13, libnvrtc.so.13).
set -euo pipefail
G=${1:-.gpu}
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
$PY -m pip install -q --no-deps --no-index --target "$WORK/site" "$G"/embedrt-*-abi3-*.whl
$PY "$G/make_mpnet.py" "$WORK/mpnet" "$G/tokenizer.json" >/dev/null
"$G/embedrt" build --model "$WORK/mpnet" --device cuda --precision fp16 \
  --profile 1x8:64x128:256x512 -o "$WORK/mpnet-fp16.plan" >/dev/null 2>&1
echo "embedrt bench --plan (fp16, batch 256, 5 repeats):"
"$G/embedrt" bench --plan "$WORK/mpnet-fp16.plan" --input "$G/stsb-en-dev.csv" \
  --batch-size 256 --repeat 5 | tee "$WORK/bench.json"
PYTHONPATH="$WORK/site" $PY - "$WORK/mpnet-fp16.plan" "$G/stsb-en-dev.csv" "$WORK/bench.json" <<'PYEOF'
import csv
import json
import sys
import time

import embedrt

plan, data, bench = sys.argv[1:4]
with open(data, newline="") as f:
    texts = [s for row in csv.reader(f) for s in row[:2]]
engine = embedrt.Engine(plan=plan, device="cuda")
print("info:", json.dumps(engine.info()))
engine.embed(texts[:256])  # warm-up
times = []
for _ in range(5):
    start = time.perf_counter()
    out = engine.embed(texts)
    times.append(time.perf_counter() - start)
assert out.shape == (len(texts), engine.dimension), out.shape
best = min(times)
py_rate = len(texts) / best
# `embedrt bench` prints JSON; take its sentences/s whatever the key layout.
text = open(bench).read()
rate = None
for line in text.splitlines():
    try:
        obj = json.loads(line)
    except ValueError:
        continue
    for key in ("sentences_per_s", "sentences_per_second", "sentences/s"):
        if isinstance(obj, dict) and key in obj:
            rate = float(obj[key])
print(f"engine_embed times (s): {[round(t, 4) for t in times]}")
ratio = f"{py_rate / rate:.3f}" if rate else "n/a (no sentences/s in the bench output above)"
print(f"python_pkg: engine_embed {py_rate:.0f} sentences/s, embedrt_bench {rate} sentences/s, ratio {ratio}")
PYEOF
