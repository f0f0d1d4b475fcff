"""The PyTorch peer: HF MPNetModel (what sentence-transformers runs inside), fp16 on the GPU,
mean pooling + normalize, on the same weights and token ids as embedrt. Prints one JSON line.

usage: peer_torch.py MODEL_DIR STS_CSV
W1: 256 x 128 random ids; W2: the STS-B dev sentences (3,000), sorted by length, padded batches
of 128; W3: one 16-token sentence, latency. Tokenization is outside the timings on both sides.
"""
import csv
import json
import sys
import time

import torch
from tokenizers import Tokenizer
from transformers import MPNetModel

model_dir, csv_path = sys.argv[1], sys.argv[2]
dev = "cuda"
model = MPNetModel.from_pretrained(model_dir, add_pooling_layer=False).half().to(dev).eval()
tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
tok.no_padding()
tok.enable_truncation(512)
texts = []
with open(csv_path, newline="") as f:
    # STS-B CSVs have no header: every row is a pair.
    for row in csv.reader(f):
        texts += [row[0], row[1]]
w2 = [e.ids for e in tok.encode_batch(texts)]
PAD = 1


def run(batch_ids):
    n, L = len(batch_ids), max(len(s) for s in batch_ids)
    ids = torch.full((n, L), PAD, dtype=torch.long)
    mask = torch.zeros((n, L), dtype=torch.long)
    for i, s in enumerate(batch_ids):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    ids, mask = ids.to(dev, non_blocking=True), mask.to(dev, non_blocking=True)
    h = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).to(h.dtype)
    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()


def timed(fn, reps):
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts


g = torch.Generator().manual_seed(0)
w1 = torch.randint(3, 30000, (256, 128), generator=g).tolist()
order = sorted(range(len(w2)), key=lambda i: len(w2[i]))
w2_batches = [[w2[i] for i in order[k:k + 128]] for k in range(0, len(order), 128)]
w3 = [torch.randint(3, 30000, (16,), generator=g).tolist()]
torch.cuda.reset_peak_memory_stats()
with torch.inference_mode():
    for _ in range(3):
        run(w1)
    t1 = timed(lambda: run(w1), 20)
    for b in w2_batches:
        run(b)
    t2 = timed(lambda: [run(b) for b in w2_batches], 7)
    for _ in range(20):
        run(w3)
    t3 = timed(lambda: run(w3), 500)
res = {
    "peer": f"torch {torch.__version__} transformers MPNetModel fp16 eager",
    "w1_seq_per_s": 256 / t1[len(t1) // 2],
    "w2_sent_per_s": len(w2) / t2[len(t2) // 2],
    "w3_p50_ms": t3[len(t3) // 2] * 1e3,
    "w3_p99_ms": t3[int(0.99 * (len(t3) - 1))] * 1e3,
    "max_memory_allocated_bytes": torch.cuda.max_memory_allocated(),
    "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
}
print(json.dumps(res), flush=True)
# torch.compile on W1 only (one shape; W2's many shapes would recompile).
try:
    compiled = torch.compile(model)
    def run_c():
        ids = torch.tensor(w1, device=dev)
        mask = torch.ones_like(ids)
        h = compiled(input_ids=ids, attention_mask=mask).last_hidden_state
        return torch.nn.functional.normalize(h.float().mean(1), dim=-1).cpu()
    with torch.inference_mode():
        for _ in range(3):
            run_c()
        tc = timed(run_c, 20)
    print(json.dumps({"w1_compiled_seq_per_s": 256 / tc[len(tc) // 2]}), flush=True)
except Exception as e:  # noqa: BLE001 -- deliberate: a torch.compile failure must not lose the eager numbers above
    print(json.dumps({"w1_compiled_error": str(e)[:300]}), flush=True)
