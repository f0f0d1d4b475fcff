#!/usr/bin/env bash
# Ray Serve (embedrt.ray_serve) vs `embedrt serve` on one H200, 32-sentence
# requests, same model and client. NOT RUN YET: Ray is not installed on the
# GPU machine; its wheel (~79 MB) has to be carried in two parts (the carry
# limit is 64 MiB), e.g. on the dev machine:
#   .venv/bin/pip download --no-deps "ray==2.60.0" -d shared/ray-wheel
#   (cd shared/ray-wheel && ls ray-*.whl > NAME && split -b 40M ray-*.whl ray.whl.part- && rm ray-*.whl)
# (the wheel must match the GPU machine's Python; see bench/gpu/ENVIRONMENT.md)
# then carry shared/ray-wheel and the embedrt wheel (target/wheels/).
# Run from the repository root on the GPU machine:
#   bash bench/gpu/ray_serve.sh [MODEL_DIR]
# It prints one JSON object: sentences/s, p50/p99 of each server and the ratio.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-.cache/all-MiniLM-L6-v2}
python3 -m venv /tmp/rayvenv
whl=/tmp/$(cat shared/ray-wheel/NAME)
cat shared/ray-wheel/ray.whl.part-* > "$whl"
# Ray's own dependencies (fastapi, uvicorn, ...) must be installable there too.
/tmp/rayvenv/bin/pip install -q "ray[serve] @ file://$whl" pyyaml target/wheels/embedrt-*-abi3-*.whl
for clients in 8 32; do
  /tmp/rayvenv/bin/python bench/ray/serve_vs_embedrt.py --model "$model" --device cuda \
    --num-gpus 1 --replicas 1 --batch 32 --clients "$clients" --seconds 30
done
