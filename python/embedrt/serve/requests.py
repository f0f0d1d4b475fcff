"""Request bodies of the TEI and OpenAI routes: parsed and checked as
`crates/server/src/routes.rs` does (serde's rules, the same messages), so a
bad request is a 4xx here exactly when it is one there."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from embedrt.serve.errors import ApiError


@dataclass(frozen=True)
class Limits:
    """What one request may hold."""

    max_client_batch_size: int = 32
    payload_limit: int = 2_000_000


@dataclass(frozen=True)
class EmbedRequest:
    texts: list[str]
    normalize: bool
    truncate: bool


@dataclass(frozen=True)
class OpenAiRequest:
    texts: list[str]
    model: str | None
    base64: bool
    dimensions: int | None


def parse_json(body: bytes, limits: Limits) -> Any:
    if len(body) > limits.payload_limit:
        raise ApiError.too_large(
            "the request body is larger than the server's payload limit"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError.bad_request("the request body is not valid UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError.bad_request(f"the request body is not valid JSON: {e}") from None


def _object(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ApiError.validation(
            f"invalid request: expected a JSON object, got {_kind(value)}"
        )
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _texts(body: dict, field: str, limits: Limits) -> list[str]:
    if field not in body:
        raise ApiError.validation(f"invalid request: missing field `{field}`")
    value = body[field]
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and all(isinstance(t, str) for t in value):
        texts = value
    else:
        raise ApiError.validation(
            f"invalid request: `{field}` must be a string or a list of strings, got {_kind(value)}"
        )
    if not texts:
        raise ApiError.validation("the input list is empty")
    if len(texts) > limits.max_client_batch_size:
        raise ApiError.too_large(
            f"{len(texts)} inputs in one request; at most {limits.max_client_batch_size} "
            "are allowed (max_client_batch_size)"
        )
    return texts


def _bool(body: dict, field: str, default: bool) -> bool:
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise ApiError.validation(
            f"invalid request: `{field}` must be true or false, got {_kind(value)}"
        )
    return value


def parse_embed(body: bytes, limits: Limits) -> EmbedRequest:
    obj = _object(parse_json(body, limits))
    return EmbedRequest(
        texts=_texts(obj, "inputs", limits),
        normalize=_bool(obj, "normalize", True),
        truncate=_bool(obj, "truncate", True),
    )


def parse_openai(body: bytes, limits: Limits) -> OpenAiRequest:
    obj = _object(parse_json(body, limits))
    model = obj.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError.validation(
            f"invalid request: `model` must be a string, got {_kind(model)}"
        )
    fmt = obj.get("encoding_format")
    if fmt not in (None, "float", "base64"):
        raise ApiError.validation(
            f'invalid request: `encoding_format` must be "float" or "base64", got {json.dumps(fmt)}'
        )
    dims = obj.get("dimensions")
    if dims is not None and (
        isinstance(dims, bool) or not isinstance(dims, int) or dims < 0
    ):
        raise ApiError.validation(
            f"invalid request: `dimensions` must be a non-negative integer, got {json.dumps(dims)}"
        )
    return OpenAiRequest(
        texts=_texts(obj, "input", limits),
        model=model,
        base64=fmt == "base64",
        dimensions=dims,
    )
