"""Prints the short table of a device run from the JSON lines under OUT."""
import json
import os
import sys

out = sys.argv[1]


def lines(name):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        return []
    res = []
    with open(p) as f:
        for l in f:
            l = l.strip()
            if l.startswith("{"):
                try:
                    res.append(json.loads(l))
                except ValueError:
                    pass
    return res


for name in ("parity.jsonl", "minilm.jsonl"):
    for r in lines(name):
        m = os.path.basename(r["model"].rstrip("/"))
        print(f"{m:26} pass={r['pass']} fp32|cpu max={r['fp32_max_abs_vs_cpu']:.2e} "
              f"fp16 cos>={r['fp16_min_cos_vs_fp32']:.6f} single>={r.get('fp16_single_min_cos_vs_fp32', float('nan')):.6f} comp32={r['fp32_composition_max_abs']:.1e} "
              f"comp16={r['fp16_composition_max_abs']:.1e} w16/w32={r['fp16_weight_ratio']:.4f}"
              + (f" rho cpu/32/16={r['cpu_spearman']:.4f}/{r['fp32_spearman']:.4f}/{r['fp16_spearman']:.4f}"
                 if "fp16_spearman" in r else ""))
for r in lines("ours.jsonl"):
    if "error" in r:
        print(f"embedrt {r['precision']}: ERROR {r['error']}")
        continue
    print(f"embedrt {r['precision']}: W1 {r['w1_seq_per_s']:.0f} seq/s  W2 {r['w2_sent_per_s']:.0f} sent/s  "
          f"W3 p50 {r['w3_p50_ms']:.3f} p99 {r['w3_p99_ms']:.3f} ms"
          + (f"  weights {r['weight_bytes']/2**20:.0f} MiB workspace {r['workspace_bytes']/2**20:.0f} MiB"
             f" load took {r['gpu_bytes_taken_by_load']/2**20:.0f} MiB" if 'weight_bytes' in r else "")
          + (f"  mixed<= {r.get('mixed_lengths_max', 512)} cos16 {r['mixed_fp16_min_cos_vs_fp32']:.6f}" if 'mixed_fp16_min_cos_vs_fp32' in r else "")
          + (f"  cos vs default {r['min_cos_vs_default_fp16']:.6f}" if 'min_cos_vs_default_fp16' in r else "")
          + (f"  slots {r['slots']} load took {r['gpu_bytes_taken_by_load']/2**20:.0f} MiB" if 'slots' in r else "")
          + (f"  W1 one engine call {r['w1_engine_call_ms']:.2f} ms" if 'w1_engine_call_ms' in r else "")
          + (f"  W3 cos16/32 {r['w3_fp16_cos_vs_fp32']:.6f}" if 'w3_fp16_cos_vs_fp32' in r else "")
          + (f"  W3 cos vs default {r['w3_cos_vs_default_fp16']:.6f}" if 'w3_cos_vs_default_fp16' in r else ""))
    for key in ("stages_w1_ms", "stages_w2_batch256_ms", "stages_w3_ms"):
        if key in r:
            print(f"   {key}: " + ", ".join(f"{k} {v:.2f}" for k, v in r[key]))
for r in lines("peer.jsonl"):
    if "w1_compiled_seq_per_s" in r:
        print(f"pytorch fp16 torch.compile: W1 {r['w1_compiled_seq_per_s']:.0f} seq/s")
        continue
    if "w1_seq_per_s" not in r:
        print("pytorch:", r)
        continue
    print(f"pytorch fp16: W1 {r['w1_seq_per_s']:.0f} seq/s  W2 {r['w2_sent_per_s']:.0f} sent/s  "
          f"W3 p50 {r['w3_p50_ms']:.3f} p99 {r['w3_p99_ms']:.3f} ms  peak alloc {r['max_memory_allocated_bytes']/2**20:.0f} MiB")
for r in lines("load.jsonl"):
    if r.get("kind") == "engine":
        print(f"engine alone (embedrt bench --plan, batch {r.get('batch_size', '?')}): {r.get('sentences_per_s', 0):.0f} sent/s ({r.get('seconds', 0):.3f} s)")
    elif r.get("kind") == "http":
        print(f"http batch {r.get('batch')} c={r.get('concurrency')}: {r.get('requests_per_s', 0):.0f} req/s "
              f"{r.get('sentences_per_s', 0):.0f} sent/s p50 {r.get('p50_ms', 0):.2f} p99 {r.get('p99_ms', 0):.2f} ms errors {r.get('errors')}")
