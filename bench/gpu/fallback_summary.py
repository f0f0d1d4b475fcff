"""Summary of bench/gpu/fallback_weights.sh's steps 1-3: int8 plans with 8-bit against fp16
fallback weights, side by side (GEMM weight share of fp32, STS-B dev, cosine vs fp32, GPU vs the
CPU fake-quant reference, W1/W2/W3).

usage: fallback_summary.py RESULTS_DIR QUANT_RESULTS_DIR
  RESULTS_DIR: this script's steps (minilm-*-int8-8bit*, mpnet-*-int8-{8bit,float});
  QUANT_RESULTS_DIR: quant.sh's logs (its MiniLM int8 plan, fp16 fallback weights).
"""
import os
import re
import sys

from quant_summary import fmt, last_json, read


def info_share(path):
    """(GEMM weight share of fp32 in %, fallback line) from an `embedrt info` log."""
    if not os.path.exists(path):
        return None, None
    text = read(path)
    share = re.search(r"gemm weights .*?: ([0-9.]+)% of fp32", text)
    fallback = re.search(r"^fallback +(.*)$", text, re.MULTILINE)
    return (float(share.group(1)) if share else None,
            fallback.group(1)[:70] if fallback else None)


def row(label, bench, info, evaluation=None, compare=None):
    r = last_json(bench) or {}
    share, fallback = info_share(info)
    ev = (last_json(evaluation) if evaluation else None) or {}
    cmp = (last_json(compare) if compare else None) or {}
    print(f"{label:24} {fmt(share, '6.1f')}% {fmt(ev.get('spearman'), '7.2f')} "
          f"{fmt(r.get('cos_vs_reference_mean'), '9.5f')} {fmt(r.get('cos_vs_reference_min'), '8.5f')} "
          f"{fmt(cmp.get('gpu_vs_cpu_fake_quant_min'), '8.5f')} {fmt(r.get('w1_seq_per_s'), '9.0f')} "
          f"{fmt(r.get('w2_sent_per_s'), '10.0f')} {fmt(r.get('w3_p50_ms'), '7.3f')}  {fallback or ''}")


def main(d, q):
    steps = os.path.join(d, "steps.txt")
    print(read(steps) if os.path.exists(steps) else "")
    print(f"{'plan':24} {'gemm/fp32':>7} {'STS':>7} {'cos mean':>9} {'cos min':>8} {'vs CPU':>8} "
          f"{'W1 seq/s':>9} {'W2 sent/s':>10} {'W3 ms':>7}  fallback")
    row("minilm int8 (fp16 fb)", os.path.join(q, "minilm-bench-int8.log"),
        os.path.join(q, "minilm-info-int8.log"), os.path.join(q, "minilm-eval-int8.log"),
        os.path.join(q, "minilm-gpu-vs-cpu-fq-int8.log"))
    row("minilm int8 (8-bit fb)", os.path.join(d, "minilm-bench-int8-8bit.log"),
        os.path.join(d, "minilm-info-int8-8bit.log"), os.path.join(d, "minilm-eval-int8-8bit.log"),
        os.path.join(d, "minilm-gpu-vs-cpu-fq-int8-8bit.log"))
    cmp = last_json(os.path.join(d, "minilm-8bit-vs-float.log"))
    if cmp:
        print(f"minilm int8: the 8-bit table's plan vs the same table with fp16 fallback weights "
              f"(GPU, 256 sentences): {cmp}")
    for fw in ("8bit", "float"):
        row(f"mpnet int8 ffn-fb {fw}", os.path.join(d, f"mpnet-bench-int8-{fw}.log"),
            os.path.join(d, f"mpnet-info-int8-{fw}.log"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
