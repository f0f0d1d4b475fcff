"""The GPU quantized plans against the CPU fake-quant reference (bench/gpu/quant.sh, step 1b).

usage: quant_cpu_ref.py sentences STS_CSV N OUT.jsonl   first N distinct sentences as {"text"} lines
       quant_cpu_ref.py compare GPU.jsonl CPU.jsonl     cosine row by row (by "index"), one JSON line

Both sides use the same calibration table (the plan's PLAN.calib.json: same scales, same
fallback), so what is left is the GPU's arithmetic: int32/fp32 accumulation order, fp16
activations between the GEMMs, and a rounding tie that flips one 8-bit code. Pure Python (no
numpy needed on the device).
"""
import csv
import json
import math
import sys


def sentences(sts, n, out):
    seen, texts = set(), []
    with open(sts, newline="") as f:
        for row in csv.reader(f):
            for s in row[:2]:
                if s and s not in seen and len(texts) < n:
                    seen.add(s)
                    texts.append(s)
    with open(out, "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    print(json.dumps({"sentences": len(texts), "file": out}))


def rows(path):
    with open(path) as f:
        got = [json.loads(line) for line in f if line.strip()]
    return [r["embedding"] for r in sorted(got, key=lambda r: r["index"])]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / max(na * nb, 1e-30)


def compare(gpu, cpu):
    g, c = rows(gpu), rows(cpu)
    if len(g) != len(c) or not g:
        sys.exit(f"error: {gpu} has {len(g)} rows, {cpu} {len(c)}")
    cos = [cosine(a, b) for a, b in zip(g, c)]
    print(json.dumps({"gpu_vs_cpu_fake_quant_mean": sum(cos) / len(cos),
                      "gpu_vs_cpu_fake_quant_min": min(cos), "sentences": len(cos)}))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "sentences":
        sentences(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
