"""Bulk embedding with Ray Data: a Parquet or JSON-lines dataset in, Parquet out.

`map_batches` runs over an actor pool: each actor opens one Engine (a GPU
each with `num_gpus=1`) and embeds batches of rows; the output keeps the
input's columns and adds `embedding` (list<float32>). Rows are neither
dropped nor repeated: Ray Data's map is one output row per input row, and
the job fails, rather than writing a partial dataset, when a batch fails.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

EMBEDDING_COLUMN = "embedding"


@dataclass(frozen=True)
class EmbedJobOptions:
    model: str | None = None
    plan: str | None = None
    device: str = "auto"
    text_column: str = "text"
    batch_size: int = 256
    concurrency: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    normalize: bool | None = None
    input_format: str | None = (
        None  # "parquet" | "json"; None: from the path's extension
    )


class EmbedBatch:
    """The actor of the pool: one Engine, reused for every batch it is given."""

    def __init__(self, model, plan, device, text_column, normalize, cache_dir=None):
        import embedrt
        from embedrt.serve.fetch import fetch

        cache = cache_dir or os.path.join(tempfile.gettempdir(), "embedrt-artifacts")
        self.engine = embedrt.Engine(
            model=fetch(model, cache) if model else None,
            plan=fetch(plan, cache) if plan else None,
            device=device,
        )
        self.text_column = text_column
        self.normalize = normalize

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.text_column not in batch.column_names:
            raise ValueError(
                f"the dataset has no column {self.text_column!r} (columns: {', '.join(batch.column_names)}); "
                "pass --text-column"
            )
        texts = batch.column(self.text_column).to_pylist()
        missing = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if missing:
            raise ValueError(
                f"column {self.text_column!r} holds a non-string value (null?) in {len(missing)} row(s)"
            )
        rows = np.ascontiguousarray(
            self.engine.embed(texts, normalize=self.normalize), dtype=np.float32
        )
        dim = rows.shape[1] if rows.ndim == 2 else 0
        offsets = pa.array(np.arange(0, (len(texts) + 1) * dim, dim, dtype=np.int32))
        column = pa.ListArray.from_arrays(
            offsets, pa.array(rows.reshape(-1), type=pa.float32())
        )
        return batch.append_column(EMBEDDING_COLUMN, column)


def _input_format(path: str, given: str | None) -> str:
    if given:
        if given not in ("parquet", "json"):
            raise ValueError(
                f"input format {given!r}: use parquet or json (JSON lines)"
            )
        return given
    name = path.rstrip("/").lower()
    if name.endswith(".parquet") or (
        os.path.isdir(path) and any(f.endswith(".parquet") for f in os.listdir(path))
    ):
        return "parquet"
    if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        return "json"
    raise ValueError(
        f"{path}: cannot tell the format from the name; pass --input-format parquet|json"
    )


def embed_dataset(input_path: str, output_path: str, options: EmbedJobOptions):
    """Embeds every row of `input_path` into Parquet files under `output_path`; returns the output Dataset."""
    import ray

    if not options.model and not options.plan:
        raise ValueError("name a model or a plan to embed with")
    if options.batch_size < 1 or options.concurrency < 1:
        raise ValueError("batch_size and concurrency must be at least 1")
    fmt = _input_format(input_path, options.input_format)
    ds = (
        ray.data.read_parquet(input_path)
        if fmt == "parquet"
        else ray.data.read_json(input_path, lines=True)
    )
    columns = ds.schema().names
    if options.text_column not in columns:
        raise ValueError(
            f"{input_path}: no column {options.text_column!r} (columns: {', '.join(columns)}); pass --text-column"
        )
    out = ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={
            "model": options.model,
            "plan": options.plan,
            "device": options.device,
            "text_column": options.text_column,
            "normalize": options.normalize,
        },
        batch_size=options.batch_size,
        batch_format="pyarrow",
        concurrency=options.concurrency,
        num_cpus=options.num_cpus,
        num_gpus=options.num_gpus,
    )
    out.write_parquet(output_path)
    return out
