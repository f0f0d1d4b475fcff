"""`python -m embedrt.ray_data --input IN --output OUT --model M`: the import path the docs name.

The code lives in `embedrt.data`; this module re-exports it and is the CLI.
"""

import sys

from embedrt.data import EMBEDDING_COLUMN, EmbedBatch, EmbedJobOptions, embed_dataset
from embedrt.data.cli import main

__all__ = ["EMBEDDING_COLUMN", "EmbedBatch", "EmbedJobOptions", "embed_dataset", "main"]

if __name__ == "__main__":
    sys.exit(main())
