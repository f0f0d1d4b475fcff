"""The Ray Serve application: one deployment class holding an Engine per replica.

    serve run embedrt.ray_serve:build_app model=.cache/all-MiniLM-L6-v2 device=cpu
    serve deploy python/embedrt/serve/config.yaml

Routes, JSON shapes, error bodies and the `x-model-version` header are those
of `embedrt serve` (`crates/server/src/routes.rs`): TEI `POST /embed` (and
`/`), OpenAI `POST /v1/embeddings` (and `/embeddings`), `GET /info`,
`GET /health`, `GET /ready`. Requests are tokenized on arrival (their token
counts weigh them in the batch queue, see `batching.py`), batched by a token
budget with `@serve.batch`, and embedded in a worker thread: `Engine.embed`
releases the GIL, so the replica's event loop keeps accepting requests while
the engine runs.
"""

import asyncio
import dataclasses
import logging
import os
import tempfile

import numpy as np
from fastapi import FastAPI, Request
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from embedrt.serve.batching import Pending, batch_tokens, split_rows, weigh
from embedrt.serve.engine_slot import Slot, open_slot
from embedrt.serve.errors import ROUTING_ERROR_TYPES, VERSION_HEADER, ApiError
from embedrt.serve.requests import Limits, parse_embed, parse_openai
from embedrt.serve.responses import dimensions, openai_body, tei_body
from embedrt.serve.user_config import UserConfig

log = logging.getLogger("ray.serve")

# The budget before the first reconfigure sets the engine's; replaced there.
DEFAULT_BATCH_TOKENS = 32768

app = FastAPI(title="embedrt", docs_url=None, redoc_url=None, openapi_url=None)
# Each replica is its own process with its own copy of this module: the
# version that process serves, for answers no handler writes (404, 405).
_serving: dict = {"version": None}


@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return exc.response(_serving["version"])


@app.exception_handler(StarletteHTTPException)
async def _routing_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    error_type = ROUTING_ERROR_TYPES.get(exc.status_code, "bad_request")
    message = (
        "no such route"
        if exc.status_code == 404
        else f"{str(exc.detail).lower()}: {request.url.path}"
    )
    resp = ApiError(exc.status_code, error_type, message).response(_serving["version"])
    for name, value in (exc.headers or {}).items():
        resp.headers[name] = value
    return resp


def _json(body, version: str | None) -> JSONResponse:
    headers = {VERSION_HEADER: version} if version else None
    return JSONResponse(body, headers=headers)


def _replica_id() -> str | None:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except RuntimeError:  # outside a replica (unit use): no id to give
        return None


@serve.deployment(
    name="Embedder",
    # The replica count follows load. target_ongoing_requests is per replica:
    # at 16 in flight a replica's batches are full (a 32-sentence request is
    # ~500 tokens, the default budget 32768), more only queues.
    autoscaling_config={
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 16,
        "upscale_delay_s": 10,
        "downscale_delay_s": 300,
    },
    max_ongoing_requests=64,
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=30,
    ray_actor_options={"num_cpus": 1},
)
@serve.ingress(app)
class Embedder:
    def __init__(self, cache_dir: str | None = None):
        self._slot: Slot | None = None
        self._config: UserConfig | None = None
        self._reload_error: str | None = None
        self._budget = DEFAULT_BATCH_TOKENS
        self._loading = asyncio.Lock()
        self._cache_dir = cache_dir or os.path.join(
            tempfile.gettempdir(), "embedrt-artifacts"
        )

    # -- lifecycle -----------------------------------------------------------

    async def reconfigure(self, raw: dict) -> None:
        """Loads what `user_config` names beside the serving engine, then swaps.

        A first load that fails fails the replica (Serve retries it). Once a
        replica serves, a bad new config never takes it down: the old engine
        keeps answering, `/info` shows `reload_error`, and the version header
        stays the old one, which is how a rollout sees the change did not land.
        """
        async with self._loading:
            try:
                config = UserConfig.parse(raw)
                slot = self._slot
                if slot is not None and slot.spec == config.spec:
                    slot = dataclasses.replace(
                        slot, version=config.version or slot.version
                    )
                else:
                    slot = await asyncio.to_thread(
                        open_slot, config.spec, config.version, self._cache_dir
                    )
            except Exception as e:
                if self._slot is None:
                    raise
                self._reload_error = f"{type(e).__name__}: {e}"
                log.error(
                    "embedrt: reconfigure failed, version %s keeps serving: %s",
                    self._slot.version,
                    e,
                )
                return
            previous = self._slot.version if self._slot else None
            self._config, self._slot, self._reload_error = config, slot, None
            _serving["version"] = slot.version
            budget = config.max_batch_tokens or int(
                slot.info.get("max_batch_tokens") or DEFAULT_BATCH_TOKENS
            )
            self._budget = budget
            self._embed_batch.set_max_batch_size(budget)
            self._embed_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
            log.info(
                "embedrt: version %s serving (previous %s), batch budget %d tokens",
                slot.version,
                previous,
                budget,
            )

    async def check_health(self) -> None:
        """Raises when there is no engine or the engine says it cannot run (Serve then replaces the replica)."""
        slot = self._slot
        if slot is None:
            raise RuntimeError("no engine is loaded")
        await asyncio.to_thread(slot.engine.health)

    # -- routes --------------------------------------------------------------

    @app.post("/")
    @app.post("/embed")
    async def embed(self, request: Request):
        slot = self._serving_slot()
        try:
            req = parse_embed(await request.body(), self._limits())
            rows, slot, _ = await self._embed(slot, req.texts, req.truncate)
            return _json(tei_body(rows, req.normalize), slot.version)
        except ApiError as e:
            return e.response(slot.version)

    @app.post("/v1/embeddings")
    @app.post("/embeddings")
    async def openai_embeddings(self, request: Request):
        slot = self._serving_slot()
        try:
            req = parse_openai(await request.body(), self._limits())
            dims = dimensions(req.dimensions, int(slot.info["dimension"]))
            rows, slot, tokens = await self._embed(slot, req.texts, True)
            body = openai_body(
                rows,
                dims,
                bool(slot.info["normalize"]),
                req.base64,
                req.model or slot.name,
                tokens,
            )
            return _json(body, slot.version)
        except ApiError as e:
            return e.response(slot.version)

    @app.get("/info")
    async def info(self):
        slot = self._serving_slot()
        config = self._config
        info = slot.info
        body = {
            "model_id": slot.name,
            "model_version": slot.version,
            "source": slot.spec.plan or slot.spec.model,
            "pooling": info.get("pooling"),
            "normalize": info.get("normalize"),
            "hidden_size": info.get("dimension"),
            "precision": info.get("precision"),
            "device": info.get("device"),
            "max_input_length": info.get("max_seq_length"),
            "max_batch_tokens": self._budget,
            "max_wait_us": int(config.batch_wait_timeout_s * 1e6),
            "max_client_batch_size": config.limits.max_client_batch_size,
            "payload_limit": config.limits.payload_limit,
            "version": info.get("version"),
            "replica": _replica_id(),
            "reload_error": self._reload_error,
        }
        return _json(body, slot.version)

    @app.get("/health")
    async def health(self):
        return _json({"status": "alive"}, _serving["version"])

    @app.get("/ready")
    async def ready(self):
        slot = self._serving_slot()
        return _json({"status": "ready", "model_version": slot.version}, slot.version)

    # -- the work --------------------------------------------------------------

    def _serving_slot(self) -> Slot:
        if self._slot is None:
            raise ApiError.not_ready()
        return self._slot

    def _limits(self) -> Limits:
        return self._config.limits if self._config else Limits()

    async def _embed(
        self, slot: Slot, texts: list[str], truncate: bool
    ) -> tuple[np.ndarray, Slot, int]:
        """Pooled rows (not normalized), the slot that made them, and their token count."""
        try:
            ids = await asyncio.to_thread(slot.engine.tokenize, texts)
            tokens = sum(map(len, ids))
            max_len = int(slot.info["max_seq_length"])
            if not truncate and any(len(t) >= max_len for t in ids):
                # A text at the limit may have been cut; only the engine
                # knows, so this request skips the batch and asks it.
                rows = await asyncio.to_thread(slot.engine.embed, texts, False, False)
                return rows, slot, tokens
            rows, used = await self._embed_batch(
                Pending(texts, weigh(tokens, self._budget))
            )
        except ValueError as e:
            raise (
                ApiError.too_large(str(e))
                if "longer than" in str(e)
                else ApiError.validation(str(e))
            ) from None
        except RuntimeError as e:
            raise ApiError.backend(f"the engine failed: {e}") from None
        if used is not slot:
            # The model changed while this request waited: count its tokens
            # with the tokenizer that embedded it.
            tokens = sum(map(len, await asyncio.to_thread(used.engine.tokenize, texts)))
        return rows, used, tokens

    # max_concurrent_batches=2: while one batch's result is being split and
    # written out, the next already runs (the GPU engine has several
    # execution slots; on the CPU the two share the rayon pool).
    @serve.batch(
        max_batch_size=DEFAULT_BATCH_TOKENS,
        batch_wait_timeout_s=0.002,
        max_concurrent_batches=2,
        batch_size_fn=batch_tokens,
    )
    async def _embed_batch(self, items: list[Pending]) -> list[tuple[np.ndarray, Slot]]:
        slot = (
            self._slot
        )  # one slot for the whole batch: its rows and its version agree
        texts = [t for item in items for t in item.texts]
        rows = await asyncio.to_thread(slot.engine.embed, texts, False, True)
        return [(block, slot) for block in split_rows(rows, items)]
