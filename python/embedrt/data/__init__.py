"""Ray Data bulk embedding (`python -m embedrt.ray_data --input ... --output ...`)."""

from embedrt.data.job import (
    EMBEDDING_COLUMN,
    EmbedBatch,
    EmbedJobOptions,
    embed_dataset,
)

__all__ = ["EMBEDDING_COLUMN", "EmbedBatch", "EmbedJobOptions", "embed_dataset"]
