"""Prints the per-stage times (`stages_w1_ms` or `stages_w3_ms`) of every
bench-*.json under a fp16_variants.sh results folder, one line a variant.
usage: python3 bench/gpu/stages.py DIR w1|w3"""
import glob
import json
import os
import sys

folder, workload = sys.argv[1], sys.argv[2]
for p in sorted(glob.glob(os.path.join(folder, "bench-*.json"))):
    try:
        with open(p) as f:
            rec = json.loads(f.read().strip().splitlines()[-1])
    except (ValueError, IndexError):
        continue
    stages = ", ".join(f"{n} {ms:.3f}" for n, ms in rec.get(f"stages_{workload}_ms", []))
    print(f"{workload.upper()} stages ms, {os.path.basename(p)[6:-5]}: {stages}")
