#!/bin/bash
# Issue 7 on the one GPU this workplace lends: `embedrt serve --device cuda:all --plan` must find
# the GPU, load the plan on it, answer /embed like the CPU engine, and report the device in
# /info and /metrics. Builds nothing: .gpu/embedrt (stripped, x86-64) carried from here.
set -uo pipefail
G=.gpu
O=${OUT:-/tmp/out}
mkdir -p "$O"
export EMBEDRT_KERNEL_CACHE=/tmp/embedrt-kernels
B=$G/embedrt
[ -x $B ] || { gunzip -kf $G/embedrt.gz && chmod +x $B; }
M=tests/fixtures/tiny-mpnet-mean-norm
$B build --model $M --device cuda --precision fp16 --profile 1x8:16x64:64x256 -o /tmp/tiny.plan 2>&1 | tail -1
$B serve --plan /tmp/tiny.plan --device cuda:all --port 18080 >"$O/serve.log" 2>&1 &
pid=$!
for _ in $(seq 300); do curl -sf localhost:18080/ready >/dev/null && break; sleep 0.1; done
python3 - "$B" "$M" "$O" <<'PY'
import json, subprocess, sys, urllib.request
binary, model, out = sys.argv[1:]
texts = json.load(open(f"{model}/expected.json"))["texts"]
def post(path, body):
    req = urllib.request.Request("http://127.0.0.1:18080" + path, json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=30))
got = post("/embed", {"inputs": texts})
# Single-sentence requests from 32 threads at once: the small-token kernels on both execution
# slots (each with its own LayerNorm ticket) must give every request its own answer.
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(32) as pool:
    singles = list(pool.map(lambda t: post("/embed", {"inputs": t})[0], texts * 8))
cpu = subprocess.run([binary, "embed", "--model", model, "--device", "cpu"], capture_output=True,
                     input="".join(json.dumps({"text": t}) + "\n" for t in texts).encode())
want = [json.loads(l)["embedding"] for l in cpu.stdout.decode().splitlines()]
cos = min(sum(a * b for a, b in zip(g, w)) for g, w in zip(got, want))
cos_single = min(sum(a * b for a, b in zip(g, w)) for g, w in zip(singles, want * 8))
info = json.load(urllib.request.urlopen("http://127.0.0.1:18080/info", timeout=10))
metrics = urllib.request.urlopen("http://127.0.0.1:18080/metrics", timeout=10).read().decode()
devices = info.get("devices")
ok = cos >= 0.9995 and cos_single >= 0.9995 and devices and len(devices) == 1 and devices[0].get("label", devices[0].get("device")) == "cuda:0" \
    and 'device="cuda:0"' in metrics
result = {"texts": len(texts), "min_cosine_gpu_fp16_vs_cpu": cos,
          "concurrent_single_requests": len(singles), "min_cosine_single_vs_cpu": cos_single, "devices": devices, "pass": bool(ok)}
json.dump(result, open(f"{out}/serve_one_gpu.json", "w"), indent=1)
print(json.dumps(result))
PY
kill -TERM $pid; wait $pid; echo "serve exit on SIGTERM: $?"
