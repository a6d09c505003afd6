"""The API key check both services apply: `Authorization: Bearer <API_KEY>` when `API_KEY` is set.

The scheme is matched case-insensitively (RFC 9110: `bearer` is the same scheme) and the key in constant time, so
its length or prefix cannot be learned from response times. Health and metrics stay open for probes and scrapers.
"""

from __future__ import annotations

import secrets

from fastapi import Request

from servicekit.errors import unauthorized


def key_matches(header: str, key: str) -> bool:
    scheme, _, given = header.strip().partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), key.encode())


def require_api_key(request: Request) -> None:
    """FastAPI dependency; the key comes from `app.state.settings.api_key` (None: no key needed)."""
    key = request.app.state.settings.api_key
    if key is not None and not key_matches(request.headers.get("authorization", ""), key.get_secret_value()):
        raise unauthorized()
