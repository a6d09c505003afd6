"""Who may use the studio, and which files it serves.

- `exposure_problem`: an open studio is refused where it would hand the services (and their API_KEY) to whoever
  reaches the port: when API_KEY is set, or when the UI is reachable beyond loopback. The process then exits with
  what to set, rather than serving everyone.
- `LoginGuard`: the login check Gradio calls. Credentials are compared in constant time, and every wrong attempt
  holds all attempts back for UI_LOGIN_FAILURE_DELAY_S, so guessing goes at one password a delay however many
  requests arrive at once. Gradio does not pass the client's address to the check, so the delay is global; the
  right password still works, after at most the wait of the attempts queued before it.
- `ServedFiles`: Gradio's `allowed_paths`, grown at run time by the folder of each scene the studio puts on a page.
  Gradio serves any file under `allowed_paths` to any signed-in user; listing DATA_DIR would serve the 3D service's
  job store and every scene ever made. Files the page shows are copied into Gradio's own cache either way; the
  scene folder only has to be allowed for that copy to be permitted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import sys
import threading
from pathlib import Path

from config import Settings, get_settings

log = logging.getLogger("studio.access")

LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


def is_loopback(address: str) -> bool:
    host = address.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name that may resolve to anything counts as exposed


def exposure_problem(settings: Settings) -> str | None:
    """Why the UI may not run without a login with these settings, or None."""
    if settings.ui_auth_user or settings.ui_allow_open:
        return None
    reasons = []
    if settings.api_key is not None:
        reasons.append("API_KEY is set, and the studio calls the services with it")
    address = settings.ui_publish_address or settings.gradio_server_name
    if not is_loopback(address):
        reasons.append(f"the UI is reachable beyond this machine (on {address})")
    if not reasons:
        return None
    return (
        "The studio will not start without a login: "
        + " and ".join(reasons)
        + ". Set UI_AUTH_USER and UI_AUTH_PASSWORD (in .env), or serve the UI on 127.0.0.1 only "
        "(UI_PUBLISH_ADDRESS / GRADIO_SERVER_NAME). UI_ALLOW_OPEN=true serves it without a login, for use behind "
        "a proxy that signs users in itself."
    )


def main() -> None:
    """`python -m studio.access`: exit 1 with the reason when the studio would refuse to start, so that start.sh
    says it before starting anything (rather than supervisord restarting a UI that exits)."""
    problem = exposure_problem(get_settings())
    if problem:
        print(problem, file=sys.stderr)
        raise SystemExit(1)


class LoginGuard:
    """The configured user and password, one wrong guess per delay (see module doc). Gradio gets `check`, a
    coroutine function: it awaits only what `inspect.iscoroutinefunction` says is one, and would take the coroutine
    an object with an async `__call__` returns for a truthy "yes"."""

    def __init__(self, user: str, password: str, failure_delay_s: float) -> None:
        self.user, self.password, self.failure_delay_s = user.encode(), password.encode(), failure_delay_s
        self._turn = asyncio.Lock()  # created in Gradio's event loop on first use (Python 3.10+ locks bind lazily)

    async def check(self, username: str, password: str) -> bool:
        async with self._turn:
            user_ok = secrets.compare_digest(username.encode(), self.user)
            password_ok = secrets.compare_digest(password.encode(), self.password)
            if user_ok and password_ok:
                return True
            log.warning("wrong UI login (user %r); the next attempt waits %.1f s", username[:64], self.failure_delay_s)
            await asyncio.sleep(self.failure_delay_s)
            return False


class ServedFiles(list[str]):
    """The list Gradio reads as `allowed_paths` on every file request; the studio adds scene folders to it."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()  # handlers run in several threads

    def __bool__(self) -> bool:
        # Gradio's launch() stores `allowed_paths or []`: an empty list would be swapped for a new one, and the
        # folders added later would never be seen. This list is always the one Gradio keeps.
        return True

    def allow(self, folder: Path) -> None:
        path = str(folder.resolve())
        with self._lock:
            if path not in self:
                self.append(path)


if __name__ == "__main__":
    main()
