#!/usr/bin/env python3
"""embedrt's CPU engine vs ONNX Runtime (CPU) on the same exported model, the
same sentences, the same batch size and the same number of threads, in one go.

    python bench/onnx_vs_cpu.py --model .cache/all-MiniLM-L6-v2 --model .cache/random-mpnet-base

For each model: `embedrt export` (fp32) into .cache/onnx-bench/<name>, then
`embedrt bench --device cpu` with RAYON_NUM_THREADS=<threads>, then ONNX
Runtime with intra_op_num_threads=<threads> on the exported model.onnx.
Both get the sentences tokenized beforehand (not timed), sorted longest
first and cut into batches the same way (embedrt's Embedder does this; the
ORT side pads each batch to its longest sequence, as any ORT user would),
one warm-up batch, then `--repeat` timed passes; `--rounds` interleaved
rounds, the best of each side reported (all are printed). Prints one JSON line per
model and a Markdown table.
"""
import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def read_sentences(path):
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return [s for r in csv.reader(f) if r for s in r[:2]]


def export(embedrt, model, out):
    subprocess.run(
        [str(embedrt), "export", "--model", str(model), "-o", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def bench_cpu(embedrt, model, sentences_csv, batch, repeat, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [
            str(embedrt), "bench", "--model", str(model), "--device", "cpu",
            "--input", str(sentences_csv), "--batch-size", str(batch), "--repeat", str(repeat),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # The whole process: loading, tokenizing, warm-up and the timed passes.
    result["process_cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def cpu_seconds_per_pass_embedrt(embedrt, model, sentences_csv, batch, threads, extra=2):
    """CPU seconds of one timed pass: the difference between a run with
    1 + extra passes and one with 1 pass, divided by extra (so loading,
    tokenizing and warm-up cancel out)."""
    one = bench_cpu(embedrt, model, sentences_csv, batch, 1, threads)
    more = bench_cpu(embedrt, model, sentences_csv, batch, 1 + extra, threads)
    return (more["process_cpu_seconds"] - one["process_cpu_seconds"]) / extra


def bench_ort(export_dir, sentences, batch, repeat, threads, spinning=True):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        # Idle threads sleep instead of spinning, so CPU time counts work only.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(export_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(export_dir / "tokenizer.json"))
    tok.no_padding()
    seqs = [e.ids for e in tok.encode_batch(sentences)]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    batches = []
    for start in range(0, len(order), batch):
        members = [seqs[i] for i in order[start : start + batch]]
        longest = max(len(s) for s in members)
        ids = np.zeros((len(members), longest), np.int64)
        mask = np.zeros((len(members), longest), np.int64)
        for r, s in enumerate(members):
            ids[r, : len(s)] = s
            mask[r, : len(s)] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    sess.run(["sentence_embedding"], batches[0])  # warm-up
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        for feed in batches:
            sess.run(["sentence_embedding"], feed)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    tokens = sum(len(s) for s in seqs) * repeat
    padded = sum(b["input_ids"].size for b in batches) * repeat
    n = len(seqs) * repeat
    return {
        "sentences": n,
        "tokens": tokens,
        "padded_tokens": padded,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "sentences_per_s": n / seconds,
        "tokens_per_s": tokens / seconds,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, type=pathlib.Path)
    ap.add_argument("--embedrt", type=pathlib.Path, default=os.environ.get("EMBEDRT_BIN", ROOT / "target/release/embedrt"))
    ap.add_argument("--sentences", type=pathlib.Path, default=ROOT.parent / "shared/data/stsb/stsb-en-dev.csv")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each side is reported")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="also estimate throughput from CPU time (robust on a shared machine)",
    )
    ap.add_argument("--limit", type=int, default=0, help="use only the first N sentences (0: all)")
    ap.add_argument("--work", type=pathlib.Path, default=ROOT / ".cache/onnx-bench")
    args = ap.parse_args()

    sentences_csv = args.sentences
    sentences = read_sentences(sentences_csv)
    if args.limit:
        sentences = sentences[: args.limit]
        args.work.mkdir(parents=True, exist_ok=True)
        sentences_csv = args.work / "sentences.jsonl"
        sentences_csv.write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences))

    def best(runs):
        return max(runs, key=lambda run: run["sentences_per_s"])

    rows = []
    for model in args.model:
        name = model.name or model.resolve().name
        out = args.work / name
        export(args.embedrt, model, out)
        # Interleaved rounds, best of each: on a shared machine the best run
        # is the one least disturbed by others.
        cpu_runs, ort_runs = [], []
        for r in range(args.rounds):
            print(f"{name}: round {r + 1}/{args.rounds}: embedrt CPU engine ...", file=sys.stderr)
            cpu_runs.append(bench_cpu(args.embedrt, model, sentences_csv, args.batch_size, args.repeat, args.threads))
            print(f"{name}: round {r + 1}/{args.rounds}: ONNX Runtime ...", file=sys.stderr)
            ort_runs.append(bench_ort(out, sentences, args.batch_size, args.repeat, args.threads))
        cpu, onnx = best(cpu_runs), best(ort_runs)
        row = {
            "model": name,
            "threads": args.threads,
            "batch_size": args.batch_size,
            "sentences": len(sentences) * args.repeat,
            "embedrt_cpu": cpu,
            "onnxruntime": onnx,
            "onnxruntime_version": ort.__version__,
            "ratio_embedrt_over_ort": cpu["sentences_per_s"] / onnx["sentences_per_s"],
            # Robust to a noisy machine: each round's two runs are close in time.
            "ratio_median_of_rounds": float(
                np.median([c["sentences_per_s"] / o["sentences_per_s"] for c, o in zip(cpu_runs, ort_runs)])
            ),
            "all_rounds_sentences_per_s": {
                "embedrt_cpu": [x["sentences_per_s"] for x in cpu_runs],
                "onnxruntime": [x["sentences_per_s"] for x in ort_runs],
            },
            "loadavg_after": os.getloadavg(),
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        }
        if args.cpu_time:
            # Contention-proof estimate: CPU seconds per pass (no spinning on
            # either side) turned into sentences/s on `threads` dedicated cores.
            print(f"{name}: CPU-time estimate ...", file=sys.stderr)
            n = len(sentences)
            ours = cpu_seconds_per_pass_embedrt(args.embedrt, model, sentences_csv, args.batch_size, args.threads)
            theirs = bench_ort(out, sentences, args.batch_size, 2, args.threads, spinning=False)["cpu_seconds"] / 2
            row["cpu_time_estimate"] = {
                "embedrt_cpu_seconds_per_pass": ours,
                "onnxruntime_cpu_seconds_per_pass": theirs,
                "embedrt_sentences_per_s_on_dedicated_cores": n * args.threads / ours,
                "onnxruntime_sentences_per_s_on_dedicated_cores": n * args.threads / theirs,
                "ratio_embedrt_over_ort": theirs / ours,
            }
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    print(
        f"| model | threads | batch | sentences | embedrt CPU sent/s (best) | ONNX Runtime {ort.__version__} sent/s (best) "
        "| ratio of bests | median ratio of rounds |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['model']} | {r['threads']} | {r['batch_size']} | {r['sentences']} | "
            f"{r['embedrt_cpu']['sentences_per_s']:.1f} | {r['onnxruntime']['sentences_per_s']:.1f} | "
            f"{r['ratio_embedrt_over_ort']:.2f} | {r['ratio_median_of_rounds']:.2f} |"
        )
    for r in rows:
        if "cpu_time_estimate" in r:
            c = r["cpu_time_estimate"]
            print(
                f"\nCPU-time estimate, {r['model']}: embedrt {c['embedrt_sentences_per_s_on_dedicated_cores']:.1f}, "
                f"ONNX Runtime {c['onnxruntime_sentences_per_s_on_dedicated_cores']:.1f} sentences/s on "
                f"{r['threads']} dedicated cores; ratio {c['ratio_embedrt_over_ort']:.2f}"
            )


if __name__ == "__main__":
    main()
