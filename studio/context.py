"""What every handler needs, built once per process: settings, the workspace, the service clients, the latest
service health (shared by all sessions, so N open tabs do not mean N health polls), and batch-cancel flags.

Health is judged over several checks (`HealthWatch`): under load a health check can time out while the service
works fine, and calling it "down" then would grey out every action for nothing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from config import Settings
from studio.access import ServedFiles
from studio.clients import Health, Services
from studio.workspace import Workspace


@dataclass
class HealthWatch:
    """What the header shows for one service, from its checks in a row. A failed check (no answer in time, or no
    connection) keeps the last answer's state, shown as "busy" when that was ready, until `failures_down` checks in
    a row have failed; then the service is "down". A service that never answered and refuses connections is down
    at once: nothing is listening, so there is nothing to wait for."""

    failures_down: int
    failures: int = 0
    last_answer: Health | None = None

    def see(self, check: Health) -> Health:
        if not check.failure:
            self.failures, self.last_answer = 0, check
            return check
        self.failures += 1
        last = self.last_answer
        if self.failures >= self.failures_down or (last is None and check.failure == "unreachable"):
            return Health("down", check.message, failure=check.failure)
        if last is None:
            return check
        if last.state != "ready":
            return last
        return Health("busy", check.message, last.queue_depth, last.details, check.failure)


@dataclass
class HealthSnapshot:
    llm: Health
    trellis: Health
    at: float = 0.0


@dataclass
class StudioContext:
    settings: Settings
    workspace: Workspace
    _services: Services | None = None
    _services_loop: asyncio.AbstractEventLoop | None = None
    _health: HealthSnapshot | None = None
    _health_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cancelled: set[str] = field(default_factory=set)  # scene ids whose 3D batch the user cancelled
    watches: dict[str, HealthWatch] = field(default_factory=dict)  # per service, created on first check
    served: ServedFiles = field(default_factory=ServedFiles)  # Gradio's allowed_paths: the scenes put on a page

    @classmethod
    def from_settings(cls, settings: Settings) -> StudioContext:
        return cls(settings=settings, workspace=Workspace(settings.data_dir))

    @property
    def services(self) -> Services:
        # Created on first use, per event loop: a pooled connection belongs to the loop that opened it (the app
        # has one loop; tests and scripts may run several).
        loop = asyncio.get_running_loop()
        if self._services is None or self._services_loop is not loop:
            self._services, self._services_loop = Services(self.settings), loop
        return self._services

    @property
    def last_health(self) -> HealthSnapshot | None:
        """The latest health snapshot without waiting for a fresh one (None before the first)."""
        return self._health

    async def health(self, *, max_age_s: float | None = None) -> HealthSnapshot:
        """Both services' readiness, refreshed when older than `max_age_s` (default: half the poll interval)."""
        max_age = self.settings.ui_status_interval_s / 2 if max_age_s is None else max_age_s
        async with self._health_lock:
            if self._health is None or time.monotonic() - self._health.at > max_age:
                llm, trellis = await asyncio.gather(self.services.llm.health(), self.services.trellis.health())
                self._health = HealthSnapshot(self._judge("llm", llm), self._judge("3d", trellis), time.monotonic())
            return self._health

    def _judge(self, service: str, check: Health) -> Health:
        watch = self.watches.setdefault(service, HealthWatch(self.settings.ui_health_failures_down))
        return watch.see(check)
