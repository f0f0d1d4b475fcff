"""Reading the device scripts' logs: every JSON line a step printed, merged into one record."""
import json
import os


def merged(path):
    """The JSON objects on the lines of `path` (a step's log), merged; {} when it is missing."""
    out = {}
    if os.path.exists(path):
        with open(path, errors="replace") as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        out.update(json.loads(line))
                    except ValueError:
                        pass
    return out


def report(tag, r):
    """Lines for one bench-plan record: cosine to the reference, W1/W2/W3, the W1 attention
    stage, W2's engine calls alone and the top stages of each."""
    nan = float("nan")
    att = sum(ms for n, ms in r.get("stages_w1_ms", []) if n.startswith("attention"))
    tot = sum(ms for n, ms in r.get("stages_w1_ms", []))
    lines = [
        (
            f"{tag:22} cos {r.get('cos_vs_reference_mean', nan):.5f} / {r.get('cos_vs_reference_min', nan):.5f}"
            f"  W1 {r.get('w1_seq_per_s', nan):8.0f}  W2 {r.get('w2_sent_per_s', nan):8.0f}"
            f" ({r.get('w2_ms', nan):.2f} ms)  W3 {r.get('w3_p50_ms', nan):.3f}"
            f"  W1 attention {att:.3f} of {tot:.2f} ms"
        )
    ]
    calls = r.get("w2_calls_alone", [])
    parts = " + ".join(f"{c['ms']:.2f}" for c in calls)
    shapes = ", ".join(f"{c['seqs']}x<={c['longest']} {c['tokens']} tok" for c in calls)
    lines.append(f"  W2 calls alone: {parts} = {sum(c['ms'] for c in calls):.2f} ms ({shapes})")
    for k, st in enumerate(r.get("stages_w2_calls_ms", [])):
        top = sorted(st, key=lambda x: -x[1])[:6]
        lines.append(
            f"  W2 call {k + 1} stages (sum {sum(ms for _, ms in st):.2f}): "
            + ", ".join(f"{n} {ms:.3f}" for n, ms in top)
        )
    return "\n".join(lines)


def embeddings(d, tag):
    """{index: embedding} from `embed --output` at d/emb-TAG.jsonl; None when it is missing."""
    p = os.path.join(d, f"emb-{tag}.jsonl")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["index"]: r["embedding"] for r in rows}


def min_cosine(a, b):
    """The least cosine between a's and b's embeddings of the same index (nan if the sets differ)."""
    def cos(x, y):
        dot = sum(p * q for p, q in zip(x, y))
        return dot / ((sum(p * p for p in x) ** 0.5) * (sum(q * q for q in y) ** 0.5))
    return min(cos(a[i], b[i]) for i in a) if a.keys() == b.keys() else float("nan")


def parity_bench_summary(d, tags, pairs, peers):
    """The summary of a device call made of `step`s: its steps, mixed-length parity between the
    embeddings tagged in `pairs` (emb-TAG.jsonl of `tags`), every bench-plan report, the peers."""
    with open(os.path.join(d, "steps.txt")) as f:
        print(f.read())
    e = {t: embeddings(d, t) for t in tags}
    for a, b in pairs:
        if e[a] and e[b]:
            print(f"mixed lengths min cos {a} vs {b}: {min_cosine(e[a], e[b]):.7f} ({len(e[a])} texts)")
    for f in sorted(os.listdir(d)):
        if f.startswith("bench-") and f.endswith(".log"):
            r = merged(os.path.join(d, f))
            print(report(f[6:-4], r))
            if "cos_vs_reference_min" in r:
                print("   vs fp32:", {k: r[k] for k in r if "cos" in k or "spearman" in k})
    for p in peers:
        print(p, merged(os.path.join(d, f"{p}.log")))


def bias_ladder_summary(d, peers):
    """The summary of bias_ladder.sh / bias_ladder2.sh: the new binary against the old and the
    fp32 plan."""
    tags = ("fp16-oldbin", "fp16-newbin", "fp32", "fp8-oldbin", "fp8-newbin")
    pairs = (("fp16-newbin", "fp16-oldbin"), ("fp16-newbin", "fp32"), ("fp16-oldbin", "fp32"),
             ("fp8-newbin", "fp8-oldbin"), ("fp8-newbin", "fp32"), ("fp8-oldbin", "fp32"))
    parity_bench_summary(d, tags, pairs, peers)
