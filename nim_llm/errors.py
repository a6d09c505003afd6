"""One error vocabulary for the LLM service, rendered as the OpenAI JSON envelope or as an SSE error event."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from fastapi.responses import JSONResponse


@dataclass
class APIError(Exception):
    """A failure the client should see: HTTP status, message and the OpenAI `type` / `param` / `code`."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def envelope(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_response(self) -> JSONResponse:
        return JSONResponse(self.envelope(), status_code=self.status, headers=self.headers or None)

    def to_sse(self) -> str:
        return f"data: {json.dumps(self.envelope())}\n\n"


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(message: str, param: str | None = None, code: str = "model_not_found") -> APIError:
    return APIError(404, message, type="not_found_error", param=param, code=code)


def unauthorized() -> APIError:
    return APIError(
        401,
        "Missing or wrong API key: send `Authorization: Bearer <API_KEY>`.",
        type="authentication_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def too_large(limit: int) -> APIError:
    return APIError(
        413, f"Request body is larger than {limit} bytes (LLM_MAX_REQUEST_BYTES).", code="request_too_large"
    )


def queue_full(retry_after_s: int, limit: int) -> APIError:
    return APIError(
        429,
        f"The server is busy: {limit} requests are already waiting (LLM_MAX_QUEUE). Retry later.",
        type="rate_limit_error",
        code="queue_full",
        headers={"Retry-After": str(retry_after_s)},
    )


def not_ready(reason: str, retry_after_s: int) -> APIError:
    return APIError(
        503, reason, type="service_unavailable", code="model_not_ready", headers={"Retry-After": str(retry_after_s)}
    )


def timed_out(limit_s: float) -> APIError:
    return APIError(
        504, f"Generation took longer than {limit_s:g}s (LLM_REQUEST_TIMEOUT_S).", type="timeout_error", code="timeout"
    )


def internal(message: str) -> APIError:
    return APIError(500, message, type="internal_error", code="internal_error")
