"""Summary of bench/gpu/fp8_forms.sh's logs: per fp8 form (weight scaling, GELU) the MPNet-base
cosine to fp32, W1/W2/W3 and the W1 stages, MiniLM's STS-B drop and the GPU-vs-CPU reference
cosine, and the PyTorch fp8 peer.

usage: fp8_forms_summary.py RESULTS_DIR FORM...
"""
import json
import os
import sys

from bench_log import merged


def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


d, forms = sys.argv[1], sys.argv[2:]
with open(os.path.join(d, "steps.txt")) as f:
    print(f.read())
head = f"{'mpnet plan':15} {'cos mean':>9} {'cos min':>8} {'W1 seq/s':>9} {'W2 sent/s':>10} {'W3 p50 ms':>9}"
print(head)
print("-" * len(head))
for p in ["fp16"] + forms:
    r = merged(os.path.join(d, f"mpnet-bench-{p}.log"))
    if not r:
        print(f"{p:15} (no result: see mpnet-bench-{p}.log / mpnet-build-{p}.log)")
        continue
    print(f"{p:15} {fmt(r.get('cos_vs_reference_mean'), '9.5f')} {fmt(r.get('cos_vs_reference_min'), '8.5f')} "
          f"{fmt(r.get('w1_seq_per_s'), '9.0f')} {fmt(r.get('w2_sent_per_s'), '10.0f')} {fmt(r.get('w3_p50_ms'), '9.3f')}")
print("targets: fp8 W1 >= 33000, W2 >= 200000, cos mean >= 0.995")
for p in ["fp16"] + forms:
    stages = merged(os.path.join(d, f"mpnet-bench-{p}.log")).get("stages_w1_ms") or []
    agg = {}
    for name, ms in stages:
        agg[name] = agg.get(name, 0) + ms
    if agg:
        top = sorted(agg.items(), key=lambda x: -x[1])[:8]
        print(f"{p} W1 stages ms (sum {sum(agg.values()):.2f}): " + ", ".join(f"{k} {v:.3f}" for k, v in top))
for f in forms:
    a = merged(os.path.join(d, f"minilm-build-{f}.log")).get("accuracy") or {}
    sp, sq = a.get("spearman_fp32"), a.get("spearman_quantized")
    drop = sp - sq if sp is not None and sq is not None else None
    ref = merged(os.path.join(d, f"minilm-gpu-vs-cpu-{f}.log"))
    print(f"minilm fp8 {f:14}: cos mean {fmt(a.get('mean_cosine'), '.5f')}, Spearman {fmt(sq, '.4f')} "
          f"(fp32 {fmt(sp, '.4f')}, drop {fmt(drop, '.3f')}; target <= 0.3)"
          + (f"; GPU vs CPU reference {json.dumps(ref)}" if ref else ""))
for name in ("peer-fp16", "peer-fp8"):
    peer = merged(os.path.join(d, f"{name}.log"))
    if peer:
        print(f"{name}:", json.dumps(peer)[:600])
