"""One error vocabulary for both model services: `APIError`, rendered as the OpenAI envelope in JSON or as an SSE
event, and the handlers that turn everything else (validation, unknown routes, crashes) into it.

`{"error": {"message", "type", "param", "code"}}` is what OpenAI clients (and NIM) expect; invalid requests are
400, never FastAPI's 422 shape; a crash answers 500 with the exception's type and leaves the process serving.

Why `CatchAll` and not only an `Exception` handler: Starlette runs that handler in its outermost middleware and
re-raises after answering, and uvicorn then closes the connection, so a client's next request on the same
keep-alive connection fails at transport level. `CatchAll` answers the 500 inside the app and swallows the
exception; only a failure after the response started (a broken stream) still ends the connection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("servicekit.errors")

# The OpenAI `type` for each status, unless an error names its own.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    501: "not_implemented_error",
    503: "service_unavailable",
    504: "timeout_error",
}
MAX_SHOWN_INPUT = 80  # longest rejected value quoted back in a validation message


class APIError(Exception):
    """A failure the client should see: HTTP status, a message saying what to fix, OpenAI `type`/`param`/`code`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,  # the OpenAI field's name
        retry_after_s: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type = type or ERROR_TYPES.get(status, "server_error")
        self.headers = dict(headers or {})
        if retry_after_s:
            self.headers["Retry-After"] = str(retry_after_s)

    def __str__(self) -> str:
        return self.message

    @property
    def retry_after_s(self) -> int | None:
        value = self.headers.get("Retry-After")
        return int(value) if value else None

    def envelope(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_response(self) -> JSONResponse:
        return JSONResponse(self.envelope(), status_code=self.status, headers=self.headers or None)

    def to_sse(self) -> str:
        return f"data: {json.dumps(self.envelope())}\n\n"


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def unauthorized() -> APIError:
    return APIError(
        401,
        "Missing or wrong API key: send `Authorization: Bearer <API_KEY>`.",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def too_large(size: int | None, limit: int, setting: str) -> APIError:
    got = f"The request body is {size} bytes" if size is not None else "The request body is larger than that"
    return APIError(413, f"{got}; the limit is {limit} bytes ({setting}).", code="request_too_large")


def internal(exc: BaseException) -> APIError:
    return APIError(500, f"Internal error: {type(exc).__name__}", type="internal_error", code="internal_error")


def validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's validation failure as one 400 naming the field, what is wrong and (short values) what was sent."""
    errors: list[dict[str, Any]] = list(exc.errors())
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error") or first.get("msg")
        return bad_request(f"The body is not valid JSON: {detail}", code="invalid_json")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    got = first.get("input")
    shown = f" (got {got!r})" if param and not isinstance(got, dict | list) and len(repr(got)) < MAX_SHOWN_INPUT else ""
    return bad_request(f"{param}: {msg}{shown}" if param else msg, param=param)


class CatchAll:
    """Pure ASGI middleware: an unexpected exception becomes a logged 500 envelope, and the connection stays open."""

    def __init__(self, app: Any, on_error: Callable[[BaseException], None] | None = None) -> None:
        self.app, self.on_error = app, on_error

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:
                raise  # part of a response is out: only closing the connection can tell the client
            log.exception("unhandled error")
            if self.on_error is not None:
                self.on_error(exc)
            await internal(exc).to_response()(scope, receive, send)


def install_error_handlers(app: FastAPI, on_error: Callable[[BaseException], None] | None = None) -> None:
    """Every failure leaves the app as an `APIError` envelope; `on_error` counts the unexpected ones."""
    app.add_middleware(CatchAll, on_error=on_error)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return exc.to_response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return validation_error(exc).to_response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        return APIError(exc.status_code, str(exc.detail), code=f"http_{exc.status_code}").to_response()
