"""`user_config` of the deployment: what the replica serves and its knobs.

Changing it (`serve deploy` with a new config, or the dashboard's
`PUT /api/serve/applications/`) calls `reconfigure` on every running
replica: a new engine is loaded beside the old one and swapped in; requests
keep flowing to the old one until then. This is the daily pipeline's hook.

    model:  a model directory, Hugging Face id, file://, http(s):// (.tar.gz) or s3:// URI
    plan:   a GPU plan file (path or URI), instead of or with `model`
    version: the x-model-version to answer with (default: a hash of model/plan)
    device: auto | cpu | cuda | cuda:N           precision, pooling: as `embedrt serve`
    max_batch_tokens: the token budget of one batch (default: the engine's)
    batch_wait_timeout_s: how long a batch waits to fill (default 0.002)
    max_client_batch_size: inputs per request (default 32, 413 beyond)
    payload_limit: bytes per request body (default 2000000, 413 beyond)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embedrt.serve.engine_slot import EngineSpec
from embedrt.serve.requests import Limits

KEYS = {
    "model",
    "plan",
    "version",
    "device",
    "precision",
    "pooling",
    "max_batch_tokens",
    "batch_wait_timeout_s",
    "max_client_batch_size",
    "payload_limit",
}


@dataclass(frozen=True)
class UserConfig:
    spec: EngineSpec
    version: str | None = None
    max_batch_tokens: int | None = None
    batch_wait_timeout_s: float = 0.002
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def parse(cls, raw: Any) -> UserConfig:
        if not isinstance(raw, dict):
            raise TypeError(f"user_config must be a mapping, got {type(raw).__name__}")
        unknown = sorted(set(raw) - KEYS)
        if unknown:
            raise ValueError(
                f"user_config: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(KEYS))}"
            )
        version = raw.get("version")
        return cls(
            spec=EngineSpec.from_config(raw),
            version=None if version is None else str(version),
            max_batch_tokens=_positive(raw, "max_batch_tokens", None, int),
            batch_wait_timeout_s=_positive(
                raw, "batch_wait_timeout_s", 0.002, float, allow_zero=True
            ),
            limits=Limits(
                max_client_batch_size=_positive(raw, "max_client_batch_size", 32, int),
                payload_limit=_positive(raw, "payload_limit", 2_000_000, int),
            ),
        )


def _positive(raw: dict, key: str, default, kind, allow_zero: bool = False):
    value = raw.get(key, default)
    if value is None:
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"user_config.{key}: expected a number, got {value!r}"
        ) from None
    if number < 0 or (number == 0 and not allow_zero):
        raise ValueError(
            f"user_config.{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}"
        )
    return number
