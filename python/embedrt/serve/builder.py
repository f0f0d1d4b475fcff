"""`build_app`: the application builder `serve run` and `serve deploy` call.

    serve run embedrt.ray_serve:build_app model=DIR_OR_URI [plan=URI] [device=cpu] [version=v1] [num_gpus=1]

Arguments (strings on the command line, or `args:` in a config file):
everything `user_config` takes (see `user_config.py`) becomes the initial
`user_config`; `num_gpus` / `num_cpus` are the replica's Ray resources.
`num_gpus` defaults to 1 when `device` asks for CUDA and 0 otherwise
(`device=auto` means "a GPU if there is one", which Ray cannot schedule on,
so say `num_gpus=1` for GPU nodes). A fraction (0.5) puts several replicas on
one GPU; do that only when the plan's device memory (`embedrt info --plan`:
weights + workspace per slot) times the replicas fits the GPU.
A config file's `deployments:` section overrides all of this.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from embedrt.serve.app import Embedder
from embedrt.serve.user_config import KEYS, UserConfig

RESOURCE_KEYS = {"num_gpus", "num_cpus"}


def build_app(args: dict[str, Any]) -> Application:
    unknown = sorted(set(args) - KEYS - RESOURCE_KEYS)
    if unknown:
        raise ValueError(
            f"build_app: unknown argument(s) {', '.join(unknown)}; known: {', '.join(sorted(KEYS | RESOURCE_KEYS))}"
        )
    user_config = {k: v for k, v in args.items() if k in KEYS}
    UserConfig.parse(user_config)  # fail at build time, not in every replica
    device = str(args.get("device", "auto"))
    num_gpus = float(args.get("num_gpus", 1 if device.startswith("cuda") else 0))
    num_cpus = float(args.get("num_cpus", 1))
    if num_gpus < 0 or num_cpus < 0:
        raise ValueError("build_app: num_gpus and num_cpus must be >= 0")
    return Embedder.options(
        user_config=user_config,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
    ).bind()
