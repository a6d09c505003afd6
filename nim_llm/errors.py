"""The LLM service's errors: the shared `APIError` (servicekit) and the refusals only this service makes."""

from __future__ import annotations

from servicekit.errors import APIError, bad_request

__all__ = ["APIError", "bad_request", "internal", "not_found", "not_ready", "queue_full", "timed_out"]


def not_found(message: str, param: str | None = None, code: str = "model_not_found") -> APIError:
    return APIError(404, message, param=param, code=code)


def queue_full(retry_after_s: int, limit: int) -> APIError:
    return APIError(
        429,
        f"The server is busy: {limit} requests are already waiting (LLM_MAX_QUEUE). Retry later.",
        code="queue_full",
        retry_after_s=retry_after_s,
    )


def not_ready(reason: str, retry_after_s: int) -> APIError:
    return APIError(503, reason, code="model_not_ready", retry_after_s=retry_after_s)


def timed_out(limit_s: float) -> APIError:
    return APIError(504, f"Generation took longer than {limit_s:g}s (LLM_REQUEST_TIMEOUT_S).", code="timeout")


def internal(message: str) -> APIError:
    return APIError(500, message, type="internal_error", code="internal_error")
