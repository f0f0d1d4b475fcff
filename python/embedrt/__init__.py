"""embedrt: fast sentence embeddings on GPU and CPU.

>>> import embedrt
>>> engine = embedrt.Engine(model="tests/fixtures/tiny-bert-mean-norm", device="cpu")
>>> engine.embed(["A man is eating food."]).shape == (1, engine.dimension)
True
"""

from embedrt._embedrt import (
    DeviceLostError,
    Engine,
    EngineError,
    OutOfMemoryError,
    __version__,
)

__all__ = [
    "DeviceLostError",
    "Engine",
    "EngineError",
    "OutOfMemoryError",
    "__version__",
]
