#!/bin/bash
# One device call (~6 minutes): how the Embedder cuts a job and how slots share the GPU, on
# fp16 and fp8 MPNet-base plans (random weights, profile 1x8:256x128:1024x512, 32k-token
# budget). Variants of bench-plan, interleaved three times: the defaults; no pipelining cut
# (EMBEDRT_MIN_PIPELINED_TOKENS=max: W1 one 32,768-token call, W2 batches up to the batch-size
# limit); the other large-batch order (fp16 concurrent, fp8 serial); one slot; fp8 with no cut
# and serial. Each record has W1/W2 call timelines and W1's stage sum cool and sustained;
# nvidia-smi samples SM clock and power every 100 ms through the benches. cuBLAS through
# PyTorch on the four linear shapes (gemm_ceiling.py) and the PyTorch fp16/fp8 peers in the
# same call (CEILING=0 skips gemm_ceiling.py). Binaries prebuilt in .gpu/
# (bench/gpu/prepare_carry.sh); carry [".gpu"]:
#   bash bench/gpu/batching.sh
# Run 31's second call (mimalloc and the 32,768-token cut against the binary before):
#   CEILING=0 VARIANTS="fp16:glibc-default:- fp16:glibc-nocut:EMBEDRT_MIN_PIPELINED_TOKENS=max
#     fp16:default:- fp16:cut16k:EMBEDRT_MIN_PIPELINED_TOKENS=16384 fp8:glibc-default:-
#     fp8:glibc-nocut:EMBEDRT_MIN_PIPELINED_TOKENS=max fp8:default:-
#     fp8:cut16k:EMBEDRT_MIN_PIPELINED_TOKENS=16384" bash bench/gpu/batching.sh
set -uo pipefail
O=/tmp/batching; BUDGET=${BUDGET:-540}
source "$(dirname "$0")/steps.sh"
mpnet_model
mpnet_plan fp16 150
mpnet_fp8_plan 120
FIELDS=clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$FIELDS --format=csv,noheader,nounits > /dev/null 2>&1 || FIELDS=clocks.sm,power.draw,temperature.gpu
nvidia-smi --query-gpu=$FIELDS --format=csv,noheader,nounits -lms 100 \
  | while read -r line; do echo "$(date +%s.%N), $line"; done > "$O/smi.csv" &
SMI=$!
# variant = precision:name:environment (comma-separated VAR=VALUE, - for none); a name that
# starts with glibc- runs $G/gpu-check-glibc (an earlier binary, carried gzipped) instead of $C.
VARIANTS=${VARIANTS:-"fp16:default:- fp16:nocut:EMBEDRT_MIN_PIPELINED_TOKENS=max fp16:concurrent:EMBEDRT_LARGE_BATCHES=concurrent
  fp16:slots1:EMBEDRT_CUDA_SLOTS=1 fp8:default:- fp8:nocut:EMBEDRT_MIN_PIPELINED_TOKENS=max
  fp8:serial:EMBEDRT_LARGE_BATCHES=serial fp8:nocut-serial:EMBEDRT_MIN_PIPELINED_TOKENS=max,EMBEDRT_LARGE_BATCHES=serial
  fp8:slots1:EMBEDRT_CUDA_SLOTS=1"}
[ -f $G/gpu-check-glibc.gz ] && gunzip -f $G/gpu-check-glibc.gz && chmod +x $G/gpu-check-glibc
CEILING=${CEILING:-1}
for n in 1 2 3; do
  for v in $VARIANTS; do
    IFS=: read -r p name envs <<< "$v"
    vars=(); [ "$envs" = - ] || IFS=, read -ra vars <<< "$envs"
    echo "$(date +%s.%N) start bench-$p-$name-$n" >> "$O/marks.txt"
    bin=$C; [ "${name#glibc-}" != "$name" ] && bin=$G/gpu-check-glibc
    step bench-$p-$name-$n 120 env "${vars[@]}" $bin bench-plan $D "$STS" $Q/$p.plan
    echo "$(date +%s.%N) end bench-$p-$name-$n" >> "$O/marks.txt"
  done
done
kill $SMI 2>/dev/null
[ "$CEILING" = 1 ] && step gemm-ceiling 120 python3 bench/gpu/gemm_ceiling.py
step peer-fp16 150 python3 $G/peer_torch.py $D "$STS"
step peer-fp8 150 python3 bench/gpu/peer_torch_fp8.py $D "$STS"
python3 bench/gpu/batching_summary.py "$O" $VARIANTS | tee "$O/summary.txt"
[ -n "${OUT:-}" ] && tar czf "$OUT/batching.tgz" -C /tmp batching && cp "$O/summary.txt" "$OUT/"
exit 0
