from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

class EngineError(RuntimeError):
    """An engine failed (not the input): a driver, library or device fault."""

class OutOfMemoryError(EngineError):
    """The device ran out of memory; smaller batches may still run."""

class DeviceLostError(EngineError):
    """The device or its context is gone; open a new Engine."""

class Engine:
    """A sentence-embedding model opened on a device."""

    def __init__(
        self,
        model: str | None = None,
        plan: str | PathLike[str] | None = None,
        device: str = "auto",
        precision: str | None = None,
        pooling: str | None = None,
        plan_cache: str | PathLike[str] | None = None,
    ) -> None: ...
    def embed(
        self,
        texts: Sequence[str],
        normalize: bool | None = None,
        truncate: bool = True,
        batch_size: int | None = None,
    ) -> npt.NDArray[np.float32]: ...
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]: ...
    def info(self) -> dict[str, Any]: ...
    def health(self) -> None: ...
    @property
    def dimension(self) -> int: ...
    @property
    def max_seq_length(self) -> int: ...
