"""The service's one error vocabulary: `ServiceError` carries status, message, param and code; `error_body` renders
it as the OpenAI/NIM envelope `{"error": {"message", "type", "param", "code"}}`.

Validation errors are answered with 400 (not FastAPI's 422 shape), as the LLM service does.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error a client can act on; the message says what to fix."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s

    @property
    def type(self) -> str:
        return ERROR_TYPES.get(self.status, "server_error")


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def error_body(err: ServiceError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> ServiceError:
    return ServiceError(400, message, code=code, param=param)
