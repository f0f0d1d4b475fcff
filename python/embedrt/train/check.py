"""The pipeline's export check: the trainer's own model (sentence-transformers
``encode``) against embedrt's ONNX export run by ONNX Runtime, on held
sentences; plus the trainer model's vectors and its STS Spearman, which the
gates compare the optimized engine with.

Run by path, like ``run.py``. Writes one JSON file (``--out``):
``{"onnx_min_cosine", "sentences", "trainer_spearman", "trainer_vectors"}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the trainer's model directory")
    p.add_argument(
        "--onnx",
        required=True,
        help="embedrt export output directory (model.onnx, tokenizer.json)",
    )
    p.add_argument(
        "--sentences", required=True, help='held sentences, JSON lines {"text": ...}'
    )
    p.add_argument(
        "--sts",
        required=True,
        help="STS CSV (sentence1,sentence2,score) for the trainer's Spearman",
    )
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def spearman(a, b) -> float:
    """Spearman's rho with average ranks for ties (numpy only: the GPU host has no scipy)."""
    import numpy as np

    def ranks(x):
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        # Ties share their mean rank.
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        sums = np.bincount(inverse, weights=r)
        return (sums / counts)[inverse]

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    import numpy as np
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    texts = [
        json.loads(line)["text"]
        for line in pathlib.Path(args.sentences).read_text().splitlines()
        if line.strip()
    ]
    if not texts:
        print(f"error: {args.sentences}: no sentences", file=sys.stderr)
        return 1
    model = SentenceTransformer(args.model, device="cpu")
    trainer_vectors = model.encode(
        texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True
    )

    onnx_dir = pathlib.Path(args.onnx)
    tokenizer = Tokenizer.from_file(str(onnx_dir / "tokenizer.json"))
    session = ort.InferenceSession(
        str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    rows = []
    for start in range(0, len(texts), 32):
        enc = tokenizer.encode_batch(texts[start : start + 32])
        feed = {
            "input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
        }
        rows.append(session.run(["sentence_embedding"], feed)[0])
    onnx_vectors = np.concatenate(rows)
    onnx_vectors = onnx_vectors / np.linalg.norm(onnx_vectors, axis=1, keepdims=True)
    cosines = np.sum(onnx_vectors * trainer_vectors, axis=1)

    with open(args.sts, newline="", encoding="utf-8") as f:
        pairs = [r for r in csv.reader(f) if r]
    left = model.encode([r[0] for r in pairs], batch_size=32, normalize_embeddings=True)
    right = model.encode(
        [r[1] for r in pairs], batch_size=32, normalize_embeddings=True
    )
    sims = np.sum(left * right, axis=1)
    result = {
        "onnx_min_cosine": float(cosines.min()),
        "sentences": len(texts),
        "trainer_spearman": 100.0 * spearman(sims, [float(r[2]) for r in pairs]),
        "trainer_vectors": trainer_vectors.astype(float).tolist(),
    }
    pathlib.Path(args.out).write_text(json.dumps(result), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "trainer_vectors"}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
