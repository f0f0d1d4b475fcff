#!/bin/bash
# One device call for the engine refactor (issue 14 item 4: engine/ split, kernel table,
# EngineOptions at load): gpu_check parity (CPU vs GPU fp32, fp16 vs fp32, batch composition,
# graphs, STS) for the default options and one variant per switch the refactor moved from
# environment variables into EngineOptions, plus the CLI honouring the EMBEDRT_* names.
# Every parity line must say "pass":true. Binaries prebuilt in .gpu/ (bench/gpu/prepare_carry.sh
# from this branch's checkout).
# ONLY=LABEL runs one parity check (default, graphs-off, scalar-attention, own-ffn-gemm, ...).
# usage: bash bench/gpu/engine_options_check.sh   (results in $OUT/engine_options.txt:
#        one "LABEL MODEL {parity JSON}" line per run)
set -uo pipefail
G=.gpu
O=${OUT:-/tmp/res}
mkdir -p "$O"
export EMBEDRT_KERNEL_CACHE=/tmp/embedrt-kernels
(cd $G && gunzip -f embedrt.gz embedrt-gpu-check.gz 2>/dev/null; chmod +x embedrt embedrt-gpu-check)
R="$O/engine_options.txt"
: > "$R"
fails=0
check() {  # check LABEL [--engine KEY=VALUE]... : MiniLM (BERT) + STS-B dev, then tiny MPNet
  local label=$1; shift
  [ -n "${ONLY:-}" ] && [ "$ONLY" != "$label" ] && return
  for m in "$G/minilm $G/stsb-en-dev.csv" "tests/fixtures/tiny-mpnet-mean-norm"; do
    # shellcheck disable=SC2086
    line=$(timeout 200 $G/embedrt-gpu-check "$@" parity $m 2>&1 | tail -1)
    echo "$label ${m%% *} $line" >> "$R"
    case "$line" in *'"pass":true'*) echo "ok   $label ${m%% *}";; *) echo "FAIL $label ${m%% *}: $line"; fails=$((fails+1));; esac
  done
}
check default                                         # graphs on, tc attention, cuBLASLt FFN
check graphs-off       --engine graphs=off            # every batch eager
check scalar-attention --engine attention=scalar      # the CUDA-core attention kernel
check own-ffn-gemm     --engine ffn_gemm=own          # Hopper wgmma FFN-in with GELU fused
check own-ffn-c2       --engine ffn_gemm=own-c2       # the same in 2-CTA clusters (w multicast)
check own-ffn-c4       --engine ffn_gemm=own-c4       # 2 x 2 clusters (x and w multicast)
check one-slot         --engine slots=1
check small-linear-off --engine small_linear=0
check early-launch-off --engine early_launch=off    # no programmatic dependent launch
check small-ln-next    --engine small_layernorm=next  # LayerNorm in the next small kernel
check small-attn-fused --engine small_attention=fused # attention inside attn-out (<= 16 tokens)
# The same switches through the environment (the names the CLI and bench scripts use).
EMBEDRT_CUDA_GRAPHS=0 EMBEDRT_ATTENTION=scalar check env-graphs0-scalar
# The CLI reads them too: a bad value is a one-line error, a good one runs (ONLY=cli: these alone).
if [ -z "${ONLY:-}" ] || [ "$ONLY" = cli ]; then
  echo '{"text": "hi"}' | EMBEDRT_CUDA_SLOTS=many $G/embedrt embed --model $G/minilm --device cuda > /dev/null 2> "$O/cli_bad.txt"
grep -q "EMBEDRT_CUDA_SLOTS=many" "$O/cli_bad.txt" && echo "ok   cli rejects EMBEDRT_CUDA_SLOTS=many" \
  || { echo "FAIL cli bad env: $(cat "$O/cli_bad.txt")"; fails=$((fails+1)); }
echo '{"text": "a man eats"}' | EMBEDRT_CUDA_SLOTS=1 EMBEDRT_CUDA_GRAPHS=0 \
  $G/embedrt embed --model $G/minilm --device cuda --precision fp16 > "$O/cli_ok.txt" 2>&1 \
  && echo "ok   cli runs with EMBEDRT_CUDA_SLOTS=1 EMBEDRT_CUDA_GRAPHS=0" || { echo "FAIL cli: $(tail -2 "$O/cli_ok.txt")"; fails=$((fails+1)); }
fi
echo "failures: $fails"
