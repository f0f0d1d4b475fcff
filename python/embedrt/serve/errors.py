"""Every error the Serve app answers with, in `embedrt serve`'s shape.

A status and a JSON body `{"error": ..., "error_type": ...}`, the same
status codes and `error_type` names as `crates/server/src/error.rs`, so a
client cannot tell the two servers apart by their errors.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

VERSION_HEADER = "x-model-version"


class ApiError(Exception):
    """An answer that is not a success: raised by handlers, turned into JSON once."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message

    @classmethod
    def validation(cls, message: str) -> ApiError:
        return cls(422, "validation", message)

    @classmethod
    def too_large(cls, message: str) -> ApiError:
        return cls(413, "payload_too_large", message)

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "bad_request", message)

    @classmethod
    def not_ready(cls) -> ApiError:
        return cls(503, "unavailable", "the model is still loading")

    @classmethod
    def backend(cls, message: str) -> ApiError:
        return cls(500, "backend", message)

    def response(self, version: str | None = None) -> JSONResponse:
        headers = {}
        if version:
            headers[VERSION_HEADER] = version
        if self.status == 429:
            headers["retry-after"] = "1"
        return JSONResponse(
            {"error": self.message, "error_type": self.error_type},
            status_code=self.status,
            headers=headers,
        )


# Statuses Starlette answers by itself (no route, wrong method), named as
# the Rust server's fallback names them.
ROUTING_ERROR_TYPES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}
