"""Test utilities shared by every test tier: free ports, in-thread uvicorn servers, waiting for HTTP."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, *, status: int = 200, timeout_s: float = 60.0, headers: dict | None = None) -> httpx.Response:
    """Poll `url` until it answers with `status`; raise with the last answer when time runs out."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=5.0, headers=headers)
            if r.status_code == status:
                return r
            last = f"{r.status_code} {r.text[:300]}"
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer {status} within {timeout_s}s; last: {last}")


@contextlib.contextmanager
def serve_in_thread(app: object, *, port: int | None = None) -> Iterator[str]:
    """Run an ASGI app under a real uvicorn on a free loopback port; yields its base URL."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
