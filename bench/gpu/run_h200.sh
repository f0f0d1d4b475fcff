#!/bin/bash
# One device call on the H200: GPU parity (fixtures, MiniLM) unless PARITY=0, the
# MPNet-base benchmark (ours fp32/fp16 + ablation variants), the PyTorch fp16 peer in the
# same call unless PEER=0, and ncu on kernels matching NCU_RE (skip with NCU=0).
# Binaries come prebuilt in .gpu/ (bench/gpu/prepare_carry.sh). Table at the end.
set -uo pipefail
G=.gpu
# Everything lands in /tmp/res; $OUT gets one tarball of it (the device returns at most 8 files).
O=/tmp/res
rm -rf "$O"; mkdir -p "$O"
export EMBEDRT_KERNEL_CACHE=/tmp/embedrt-kernels PYTHONUNBUFFERED=1
cd $G && gunzip -f embedrt.gz embedrt-gpu-check.gz 2>/dev/null; chmod +x embedrt embedrt-gpu-check; cd ..
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$O/gpu.txt"
if [ "${PARITY:-1}" = 1 ]; then
  : > "$O/parity.jsonl"
  for f in tests/fixtures/tiny-*/; do timeout 120 $G/embedrt-gpu-check parity "$f" >> "$O/parity.jsonl" 2>&1; done
  [ -d $G/minilm ] && timeout ${PARITY_TIMEOUT:-200} $G/embedrt-gpu-check parity $G/minilm $G/stsb-en-dev.csv > "$O/minilm.jsonl" 2>&1
  grep -q '"pass":true' "$O/minilm.jsonl" || echo "MiniLM parity FAILED"
fi
[ -d /tmp/mpnet ] || timeout 200 python3 $G/make_mpnet.py /tmp/mpnet $G/tokenizer.json 2>&1 | tail -1
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu --format=csv -lms 500 > "$O/clocks.csv" 2>&1 &
SMI=$!
timeout ${BENCH_TIMEOUT:-400} $G/embedrt-gpu-check bench /tmp/mpnet $G/stsb-en-dev.csv /tmp/plans > "$O/ours.jsonl" 2> "$O/ours.err"; echo "bench rc=$?"; tail -3 "$O/ours.err"
kill $SMI 2>/dev/null
if [ "${PEER:-1}" = 1 ]; then timeout 200 python3 $G/peer_torch.py /tmp/mpnet $G/stsb-en-dev.csv > "$O/peer.jsonl" 2>&1; fi
[ "${NCU:-1}" = 1 ] && bash bench/gpu/profile_kernels.sh /tmp/plans/mpnet-fp16.plan "$O" "${NCU_RE:-.}" "${NCU_SKIP:-120}" "${NCU_COUNT:-12}" > "$O/ncu_summary.txt" 2>&1
if [ "${SERVE:-1}" = 1 ]; then
  OUT=$O bash bench/gpu/serve_one_gpu.sh > "$O/serve_one_gpu.txt" 2>&1
  OUT=$O bash bench/gpu/run_load.sh > "$O/load.txt" 2>&1
  cat "$O/serve_one_gpu.txt"
fi
python3 $G/summarize.py "$O"
[ -n "${OUT:-}" ] && tar czf "$OUT/results.tgz" -C "$O" .
echo "clocks (MHz) during the bench: $(awk -F, 'NR>1{print $2}' "$O/clocks.csv" | sort -n | uniq -c | sort -rn | head -5 | tr '\n' ' ')"
