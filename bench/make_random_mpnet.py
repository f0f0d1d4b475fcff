#!/usr/bin/env python3
"""Writes a random-weight MPNet-base sentence-transformers model directory
(all-mpnet-base-v2's shapes) for benchmarks: numpy only, no torch.

    python bench/make_random_mpnet.py --out .cache/random-mpnet-base

The weights are random (seeded), so only speed means anything, not the
embeddings. The tokenizer is copied from all-MiniLM-L6-v2 (BERT's uncased
WordPiece, 30,522 tokens, all below MPNet's 30,527): token counts are only
representative of MPNet's own tokenizer. The ~438 MB safetensors file
belongs under .cache/ (git-ignored).
"""
import argparse
import json
import pathlib
import shutil
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]

CONFIG = {
    "architectures": ["MPNetModel"],
    "model_type": "mpnet",
    "vocab_size": 30527,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 514,
    "layer_norm_eps": 1e-05,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "relative_attention_num_buckets": 32,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "initializer_range": 0.02,
}
MAX_SEQ_LENGTH = 384


def tensors(rng):
    c = CONFIG
    h, inter = c["hidden_size"], c["intermediate_size"]

    def normal(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * c["initializer_range"]).astype(np.float32)

    def norm(prefix):
        return {f"{prefix}.weight": np.ones(h, np.float32), f"{prefix}.bias": np.zeros(h, np.float32)}

    def linear(prefix, out, inp):
        return {f"{prefix}.weight": normal(out, inp), f"{prefix}.bias": normal(out)}

    t = {
        "embeddings.word_embeddings.weight": normal(c["vocab_size"], h),
        "embeddings.position_embeddings.weight": normal(c["max_position_embeddings"], h),
        **norm("embeddings.LayerNorm"),
        "encoder.relative_attention_bias.weight": normal(
            c["relative_attention_num_buckets"], c["num_attention_heads"]
        ),
    }
    for i in range(c["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        for name in "qkvo":
            t.update(linear(f"{p}.attention.attn.{name}", h, h))
        t.update(norm(f"{p}.attention.LayerNorm"))
        t.update(linear(f"{p}.intermediate.dense", inter, h))
        t.update(linear(f"{p}.output.dense", h, inter))
        t.update(norm(f"{p}.output.LayerNorm"))
    return t


def write_safetensors(path, tensors):
    """The safetensors layout: u64 header size, JSON header, raw data."""
    header, offset = {}, 0
    for name, a in tensors.items():
        n = a.nbytes
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a, "<f4").tobytes())
    tmp.replace(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument(
        "--tokenizer-from",
        type=pathlib.Path,
        default=ROOT / ".cache/all-MiniLM-L6-v2",
        help="model directory whose tokenizer.json is copied (default: .cache/all-MiniLM-L6-v2)",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tok = args.tokenizer_from / "tokenizer.json"
    if not tok.exists():
        sys.exit(f"error: {tok} is missing (run scripts/setup-test-env.sh, or pass --tokenizer-from)")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "2_Normalize").mkdir(exist_ok=True)
    write_safetensors(out / "model.safetensors", tensors(np.random.default_rng(args.seed)))
    (out / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    shutil.copyfile(tok, out / "tokenizer.json")
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False}) + "\n"
    )
    (out / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ],
            indent=2,
        )
        + "\n"
    )
    (out / "1_Pooling/config.json").write_text(
        json.dumps({"word_embedding_dimension": CONFIG["hidden_size"], "pooling_mode_mean_tokens": True}) + "\n"
    )
    (out / "README.md").write_text(
        "# Random-weight MPNet-base (benchmark shapes only)\n\n"
        "Written by bench/make_random_mpnet.py: all-mpnet-base-v2's configuration (hidden 768, "
        "12 layers, 12 heads, intermediate 3072, max_seq_length 384, mean pooling, normalized) "
        f"with random weights (seed {args.seed}). The embeddings mean nothing; use it for speed.\n\n"
        "The tokenizer is BERT's uncased WordPiece (copied from all-MiniLM-L6-v2), not MPNet's, "
        "so token counts are only representative.\n"
    )
    print(out)


if __name__ == "__main__":
    main()
