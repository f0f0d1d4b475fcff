"""The token budget of `@serve.batch`.

`@serve.batch` counts requests by default; a count says little about work
(64 one-word queries and 64 requests of 32 paragraphs are both "64"). Ray
2.60's `batch_size_fn` lets the batch be measured in anything: here each
request weighs its token count, `max_batch_size` is the token budget
(`user_config.max_batch_tokens`, by default the engine's own, which a GPU
plan's workspace was sized for), and a request that would overflow a batch
waits for the next one instead of being split. A request larger than the
whole budget weighs the budget, so it runs alone rather than being refused
(Serve rejects an item heavier than `max_batch_size`); the engine cuts it
into its own batches.

The alternative the brief names (derive `max_batch_size` from the budget and
a typical request size) was not taken: request sizes differ by three orders
of magnitude, so any fixed count is too small for queries or too large for
documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Pending:
    """One request waiting in the batch queue."""

    texts: list[str]
    weight: int  # its tokens, capped at the budget in force when it arrived


def weigh(tokens: int, budget: int) -> int:
    """A request's weight in the batch queue: its tokens, at most the budget."""
    return max(1, min(tokens, budget))


def batch_tokens(items: Sequence[Pending]) -> int:
    """`batch_size_fn`: a batch's size is the tokens it holds."""
    return sum(item.weight for item in items)


def split_rows(vectors, items: Sequence[Pending]) -> list:
    """The engine's rows for the whole batch, back into one block per request."""
    out, start = [], 0
    for item in items:
        out.append(vectors[start : start + len(item.texts)])
        start += len(item.texts)
    return out
