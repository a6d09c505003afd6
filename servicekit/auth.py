"""The API key check both services apply: `Authorization: Bearer <API_KEY>` when `API_KEY` is set.

The scheme is matched case-insensitively (RFC 9110: `bearer` is the same scheme) and the key in constant time, so
its length or prefix cannot be learned from response times. Health and metrics stay open for probes and scrapers.
The API's own description (`/openapi.json`, `/docs`, `/redoc`) is behind the key like the API: it lists every route
and field, the first thing someone probing the service would read.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import FastAPI, Request
from starlette.routing import Route

from servicekit.errors import APIError, unauthorized


def key_matches(header: str, key: str) -> bool:
    scheme, _, given = header.strip().partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), key.encode())


def require_api_key(request: Request) -> None:
    """FastAPI dependency; the key comes from `app.state.settings.api_key` (None: no key needed)."""
    key = request.app.state.settings.api_key
    if key is not None and not key_matches(request.headers.get("authorization", ""), key.get_secret_value()):
        raise unauthorized()


def protect_docs(app: FastAPI) -> None:
    """Put FastAPI's schema and documentation pages behind `require_api_key` (open when API_KEY is unset).

    A browser cannot send the header, so with a key set the pages are read with a client that does, e.g.
    `curl -H "Authorization: Bearer $API_KEY" http://127.0.0.1:8000/openapi.json`."""
    paths = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url} - {None}
    for route in app.router.routes:
        if isinstance(route, Route) and route.path in paths:
            route.app = _keyed(route.app)


def _keyed(inner: Any) -> Any:
    """An ASGI app that answers 401 (the error envelope) unless the request carries the key, then runs `inner`."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            require_api_key(Request(scope))
        except APIError as e:
            await e.to_response()(scope, receive, send)
            return
        await inner(scope, receive, send)

    return app
