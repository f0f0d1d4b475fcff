"""Response bodies of the TEI and OpenAI routes, as `crates/server/src/routes.rs` writes them."""

from __future__ import annotations

import base64

import numpy as np


def l2_normalize(rows: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalization in float32, with the Rust engine's 1e-12 floor."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.sqrt(np.sum(rows * rows, axis=1, dtype=np.float32)).astype(np.float32)
    return rows / np.maximum(norms, np.float32(1e-12))[:, None]


def tei_body(rows: np.ndarray, normalize: bool) -> list:
    if normalize:
        rows = l2_normalize(rows)
    return rows.tolist()


def openai_body(
    rows: np.ndarray,
    dims: int,
    model_normalizes: bool,
    use_base64: bool,
    model: str,
    tokens: int,
) -> dict:
    # Shortened embeddings are renormalized, as OpenAI's are.
    rows = np.ascontiguousarray(rows[:, :dims], dtype=np.float32)
    if model_normalizes:
        rows = l2_normalize(rows)
    data = []
    for index, row in enumerate(rows):
        embedding: object
        if use_base64:
            embedding = base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
        else:
            embedding = row.tolist()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def dimensions(requested: int | None, hidden: int) -> int:
    """The width to answer with; None means the model's."""
    from embedrt.serve.errors import ApiError

    if requested is None:
        return hidden
    if 1 <= requested <= hidden:
        return requested
    raise ApiError.validation(
        f"dimensions {requested}: must be between 1 and the model's {hidden}"
    )
