"""What every handler needs, built once per process: settings, the workspace, the service clients, the latest
service health (shared by all sessions, so N open tabs do not mean N health polls), and batch-cancel flags."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from config import Settings
from studio.clients import Health, Services
from studio.workspace import Workspace


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
                self._health = HealthSnapshot(llm, trellis, time.monotonic())
            return self._health
