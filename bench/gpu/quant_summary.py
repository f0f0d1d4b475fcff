"""Summary table of bench/gpu/quant.sh's logs (a results folder): per model and precision the
GEMM weight bytes, fallback, cosine vs fp32, STS-B Spearman, W1/W2/W3, and the PyTorch peers.

usage: quant_summary.py RESULTS_DIR
"""
import glob
import json
import os
import sys


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


def last_json(path):
    """Every JSON-object line of a log merged (later keys win), or None if there is none."""
    if not os.path.exists(path):
        return None
    out = None
    for line in read(path).splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out = {**(out or {}), **json.loads(line)}
            except ValueError:
                continue
    return out


def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def main(d):
    print(read(os.path.join(d, "steps.txt")) if os.path.exists(os.path.join(d, "steps.txt")) else "")
    head = (f"{'model':7} {'prec':5} {'gemm MiB':>9} {'fallback':>8} {'cos mean':>9} {'cos min':>8} "
            f"{'STS':>6} {'STS fp32':>8} {'W1 seq/s':>9} {'W2 sent/s':>10} {'W3 p50 ms':>9}")
    print(head)
    print("-" * len(head))
    for tag in ("minilm", "mpnet"):
        for p in ("fp16", "int8", "fp8"):
            r = last_json(os.path.join(d, f"{tag}-bench-{p}.log"))
            if r is None:
                print(f"{tag:7} {p:5} (no result: see {tag}-bench-{p}.log)")
                continue
            ev = last_json(os.path.join(d, f"{tag}-eval-{p}.log")) or {}
            gemm = r.get("gemm_weight_bytes")
            fb = r.get("fallback")
            print(f"{tag:7} {p:5} {fmt(gemm / 2**20 if gemm else None, '9.1f')} "
                  f"{fmt(len(fb) if fb is not None else None, '8d')} "
                  f"{fmt(r.get('cos_vs_reference_mean'), '9.5f')} {fmt(r.get('cos_vs_reference_min'), '8.5f')} "
                  f"{fmt(ev.get('spearman', r.get('spearman')), '6.2f')} {fmt(r.get('spearman_reference'), '8.2f')} "
                  f"{fmt(r.get('w1_seq_per_s'), '9.0f')} {fmt(r.get('w2_sent_per_s'), '10.0f')} "
                  f"{fmt(r.get('w3_p50_ms'), '9.3f')}")
    for name in ("peer-fp16", "peer-fp8"):
        r = last_json(os.path.join(d, f"{name}.log"))
        if r is None:
            print(f"{name}: no result (see {name}.log)")
        else:
            keys = ("w1_seq_per_s", "w2_sent_per_s", "w3_p50_ms")
            print(f"{name}: " + ", ".join(f"{k} {fmt(r.get(k), '.3f' if 'ms' in k else '.0f')}" for k in keys)
                  + (f" ({r['note']})" if "note" in r else ""))
    ev32 = last_json(os.path.join(d, "minilm-eval-fp32.log")) or {}
    for p in ("int8", "fp8"):
        ev = last_json(os.path.join(d, f"minilm-eval-{p}.log")) or {}
        if "spearman" in ev and "spearman" in ev32:
            drop = ev32["spearman"] - ev["spearman"]
            print(f"MiniLM {p}: STS-B dev Spearman {ev['spearman']:.2f} vs fp32 {ev32['spearman']:.2f}: "
                  f"drop {drop:.2f} ({'OK' if drop <= 0.3 else 'ABOVE the 0.3 target'})")
    for path in sorted(glob.glob(os.path.join(d, "*info-*.log"))):
        lines = [ln for ln in read(path).splitlines()
                 if ln.startswith(("precision", "gemm weights", "fallback", "accuracy", "quantization"))]
        if lines:
            print(os.path.basename(path)[:-4] + ":\n  " + "\n  ".join(lines))
    for p in ("int8", "fp8"):
        r = last_json(os.path.join(d, f"minilm-gpu-vs-cpu-fq-{p}.log"))
        if r and "gpu_vs_cpu_fake_quant_mean" in r:
            print(f"MiniLM {p}: GPU plan vs CPU fake-quant reference (same table, {r['sentences']} "
                  f"sentences): cosine mean {r['gpu_vs_cpu_fake_quant_mean']:.6f}, "
                  f"min {r['gpu_vs_cpu_fake_quant_min']:.6f}")
        else:
            print(f"MiniLM {p}: GPU vs CPU fake-quant: no result (see minilm-*-{p}.log)")
    bad = os.path.join(d, "minilm-bad-format.log")
    if os.path.exists(bad):
        print("bad input (fp8 build with an int8 table): " + read(bad).strip().splitlines()[-1])


if __name__ == "__main__":
    main(sys.argv[1])
