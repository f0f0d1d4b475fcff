"""One loaded model inside a replica: the Engine, the version it answers
as, and where it came from. Swapped whole on reconfigure, so a batch that
took a slot finishes on that slot's engine and reports that slot's version."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import embedrt
from embedrt.serve.fetch import fetch


@dataclass(frozen=True)
class EngineSpec:
    """What to load: the engine-defining part of `user_config`."""

    model: str | None = None
    plan: str | None = None
    device: str = "auto"
    precision: str | None = None
    pooling: str | None = None

    @classmethod
    def from_config(cls, config: dict) -> EngineSpec:
        spec = cls(
            model=config.get("model"),
            plan=config.get("plan"),
            device=config.get("device", "auto"),
            precision=config.get("precision"),
            pooling=config.get("pooling"),
        )
        if not spec.model and not spec.plan:
            raise ValueError(
                "user_config names no model: set `model` (a directory, id or URI) or `plan`"
            )
        return spec


@dataclass(frozen=True)
class Slot:
    engine: Any
    version: str
    spec: EngineSpec
    info: dict

    @property
    def name(self) -> str:
        return os.path.basename(
            str(self.info.get("model") or self.spec.model or self.spec.plan).rstrip("/")
        )


def open_slot(spec: EngineSpec, version: str | None, cache_dir: str) -> Slot:
    """Fetches what the spec names, opens an Engine and runs one warm-up batch (blocking)."""
    model = fetch(spec.model, cache_dir) if spec.model else None
    plan = fetch(spec.plan, cache_dir) if spec.plan else None
    engine = embedrt.Engine(
        model=model,
        plan=plan,
        device=spec.device,
        precision=spec.precision,
        pooling=spec.pooling,
    )
    # The first batch compiles kernels / touches every weight page; pay it
    # before the slot takes traffic.
    engine.embed(["warm-up"])
    info = dict(engine.info())
    return Slot(
        engine=engine, version=version or default_version(spec), spec=spec, info=info
    )


def default_version(spec: EngineSpec) -> str:
    """Without `user_config.version`: a short hash of what was loaded."""
    key = repr((spec.model, spec.plan, spec.precision, spec.pooling)).encode()
    return hashlib.sha256(key).hexdigest()[:12]
