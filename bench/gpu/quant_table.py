"""A calibration table (crates/core/src/quant.rs's CalibrationTable, JSON) for the GPU quant
check, made with PyTorch on the device: the input of every GEMM of every layer is recorded with
forward hooks on the Hugging Face model (fp32), and its amax is the 99.99th percentile of |x|
(minmax with --minmax). Stands in for `embedrt calibrate` (branch quant-cpu) until that is merged;
the table's format is the same, so `embedrt build --calibration-table` reads either.

usage: quant_table.py MODEL_DIR STS_CSV OUT_PREFIX [--first N] [--count M] [--minmax]
writes OUT_PREFIX-int8.table.json and OUT_PREFIX-fp8.table.json (one pass: same amax, scale =
amax / 127 or amax / 448).
Calibration sentences: M sentences of the STS file starting at sentence N (default 1000..1511,
apart from the 1000 held-out sentences `embedrt build --eval` measures on).
"""
import csv
import hashlib
import json
import sys

import torch
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModel

args = sys.argv[1:]
model_dir, csv_path, prefix = args[:3]
first = int(args[args.index("--first") + 1]) if "--first" in args else 1000
count = int(args[args.index("--count") + 1]) if "--count" in args else 512
minmax = "--minmax" in args

cfg = AutoConfig.from_pretrained(model_dir)
arch = cfg.model_type  # "bert" or "mpnet"
model = AutoModel.from_pretrained(model_dir, add_pooling_layer=False).float().cuda().eval()
tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
tok.no_padding()
tok.enable_truncation(min(512, cfg.max_position_embeddings - 2))
texts = []
with open(csv_path, newline="") as f:
    for row in csv.reader(f):
        texts += [row[0], row[1]]
texts = texts[first:first + count]

# GEMM -> the module whose input is that GEMM's input (Q, K and V share theirs).
if arch == "mpnet":
    names = {"qkv": "attention.attn.q", "attn_out": "attention.attn.o",
             "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}
else:
    names = {"qkv": "attention.self.query", "attn_out": "attention.output.dense",
             "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}
seen = {}
hooks = []
mods = dict(model.named_modules())
for layer in range(cfg.num_hidden_layers):
    for kind, sub in names.items():
        m = mods[f"encoder.layer.{layer}.{sub}"]
        key = f"layers.{layer}.{kind}.input"

        def hook(_m, inp, key=key):
            seen.setdefault(key, []).append(inp[0].detach().abs().flatten().float().cpu())

        hooks.append(m.register_forward_hook(hook))

pad = cfg.pad_token_id or 0
with torch.no_grad():
    for i in range(0, len(texts), 64):
        enc = [e.ids for e in tok.encode_batch(texts[i:i + 64])]
        # One sequence at a time: no padding tokens in the statistics (embedrt packs sequences).
        for ids in enc:
            x = torch.tensor([ids], device="cuda")
            model(input_ids=x, attention_mask=torch.ones_like(x))
amaxes = []
method = "minmax" if minmax else "percentile:99.99"
for key in sorted(seen, key=lambda k: (int(k.split(".")[1]), list(names).index(k.split(".")[2]))):
    v = torch.cat(seen[key])
    if minmax:
        amax = float(v.max())
    else:
        k = max(1, round(0.9999 * v.numel()))
        amax = float(v.kthvalue(k).values)
    amaxes.append((key, amax))
with open(f"{model_dir}/model.safetensors", "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()
for fmt, fmt_max in (("int8", 127.0), ("fp8", 448.0)):
    tensors = [{"name": k, "amax": a, "scale": a / fmt_max if a > 0 else 1.0, "method": method}
               for k, a in amaxes]
    table = {
        "format_version": 1,
        "model": {"architecture": arch, "hidden_size": cfg.hidden_size,
                  "num_layers": cfg.num_hidden_layers, "weights_sha256": sha},
        "precision": fmt, "calibrator": method, "sentences": len(texts), "tensors": tensors,
        "fallback": [], "accuracy": None,
    }
    out = f"{prefix}-{fmt}.table.json"
    with open(out, "w") as f:
        json.dump(table, f, indent=1)
    print(json.dumps({"table": out, "tensors": len(tensors), "sentences": len(texts), "method": method}))
