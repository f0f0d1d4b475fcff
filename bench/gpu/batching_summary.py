"""The summary of bench/gpu/batching.sh: per variant (precision:name:env) the W1/W2 numbers of
each repeat, the cool and sustained W1 stage sums, the first repeat's call timelines, the SM
clock and board power while it ran; then the cuBLAS ceiling per shape and the peers.

usage: batching_summary.py RESULTS_DIR VARIANT...
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_log import merged


def marks(d):
    """{step: (start, end)} in epoch seconds, from marks.txt."""
    out = {}
    p = os.path.join(d, "marks.txt")
    if os.path.exists(p):
        with open(p) as f:
            lines = f.readlines()
        for line in lines:
            t, what, step = line.split()
            s, e = out.get(step, (None, None))
            out[step] = (float(t), e) if what == "start" else (s, float(t))
    return out


def smi(d):
    """[(epoch, sm_mhz, watts, reasons)] from smi.csv; reasons is '' when not sampled."""
    rows = []
    p = os.path.join(d, "smi.csv")
    if os.path.exists(p):
        with open(p) as fh:
            lines = fh.readlines()
        for line in lines:
            f = [x.strip() for x in line.split(",")]
            try:
                rows.append((float(f[0]), float(f[1]), float(f[2]), f[4] if len(f) > 4 else ""))
            except (ValueError, IndexError):
                pass
    return rows


def clock_line(samples, span):
    """Median SM clock and power of the busy samples (> 150 W) within span."""
    if not span or None in span:
        return "no clock samples"
    busy = [r for r in samples if span[0] <= r[0] <= span[1] and r[2] > 150]
    if not busy:
        return "no busy samples"
    reasons = sorted({r[3] for r in busy if r[3]})
    return (f"SM clock median {statistics.median(r[1] for r in busy):.0f} MHz"
            f" (min {min(r[1] for r in busy):.0f}), power median {statistics.median(r[2] for r in busy):.0f} W"
            f" (max {max(r[2] for r in busy):.0f}), {len(busy)} busy samples, reasons {reasons}")


def timeline(t):
    """'w0 16384t 0.0-6.1 | ...' for a {job_ms, calls} record."""
    if not t:
        return "-"
    calls = " | ".join(f"w{w} {tok}t {s:.2f}-{e:.2f}" for w, _, tok, s, e in t["calls"])
    return f"job {t['job_ms']:.2f} ms: {calls}"


def main(d, variants):
    with open(os.path.join(d, "steps.txt")) as f:
        print(f.read())
    m, samples = marks(d), smi(d)
    for v in variants:
        p, name, env = v.split(":")
        print(f"== {p} {name} ({env})")
        w1, w2 = [], []
        for n in (1, 2, 3):
            step = f"bench-{p}-{name}-{n}"
            r = merged(os.path.join(d, f"{step}.log"))
            if not r:
                print(f"  {step}: no record")
                continue
            w1.append(r["w1_seq_per_s"])
            w2.append(r["w2_sent_per_s"])
            alone = sum(c["ms"] for c in r["w2_calls_alone"])
            print(f"  {n}: W1 {r['w1_seq_per_s']:.0f} ({r['w1_ms']:.2f} ms; one call {r['w1_engine_call_ms']:.2f};"
                  f" stage sum cool {r.get('stages_w1_sum_first_ms', float('nan')):.2f},"
                  f" sustained {r.get('stages_w1_sum_median_ms', float('nan')):.2f})"
                  f"  W2 {r['w2_sent_per_s']:.0f} ({r['w2_ms']:.2f} ms; calls alone {alone:.2f})"
                  f"  W3 {r['w3_p50_ms']:.3f}  {clock_line(samples, m.get(step))}")
            if n == 1:
                print(f"     W1 {timeline(r.get('w1_timeline'))}")
                print(f"     W2 {timeline(r.get('w2_timeline'))}")
        if w1:
            print(f"  median W1 {statistics.median(w1):.0f}  W2 {statistics.median(w2):.0f}")
    ceiling = os.path.join(d, "gemm-ceiling.log")
    if os.path.exists(ceiling):
        print("== cuBLAS via PyTorch, TFLOP/s cool / sustained")
        with open(ceiling) as f:
            lines = f.readlines()
        for line in lines:
            if line.startswith("{"):
                r = json.loads(line)
                print(f"  {r['precision']} {r['tokens']:6} {r['layer']:9} {r['cool_tflops']:6.0f} / {r['sustained_tflops']:6.0f}"
                      f"  ({r['sustained_ms']:.3f} ms)")
    for peer in ("peer-fp16", "peer-fp8"):
        print(peer, merged(os.path.join(d, f"{peer}.log")))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
