"""The 3D service's errors: the shared `APIError` of both services (servicekit), rendered as the OpenAI/NIM
envelope `{"error": {"message", "type", "param", "code"}}`; invalid requests get 400, as on the LLM service."""

from __future__ import annotations

from servicekit.errors import APIError


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> APIError:
    return APIError(400, message, code=code, param=param)


def job_not_found(job_id: str, retention_s: float) -> APIError:
    return APIError(
        404,
        f"No job {job_id!r}; it never existed or expired after {retention_s:g}s (JOB_RETENTION_S).",
        code="job_not_found",
        param="id",
    )
