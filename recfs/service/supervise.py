"""Background tasks that fail are logged, counted and started again: no failure of
one (back-fill, prefetch, the cache's upkeep, the session keeper, the metrics
endpoint, ...) may end the mount, just as no failing FUSE handler may
(recfs/vfs/fuse_ops.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

log = logging.getLogger("recfs.service")

FIRST_PAUSE = 1.0
MAX_PAUSE = 300.0
# A task that ran this long before failing starts over with the first pause.
HEALTHY_AFTER = 600.0


@dataclass
class TaskHealth:
    failures: int = 0
    last_error: str | None = None
    last_failure: float | None = None  # time.time()


class Supervisor:
    def __init__(self, label: str = "", first_pause: float = FIRST_PAUSE,
                 max_pause: float = MAX_PAUSE):
        """*label* names the PBX in log lines of a mount of several PBXs."""
        self.label = label
        self.first_pause = first_pause
        self.max_pause = max_pause
        self.health: dict[str, TaskHealth] = {}

    def start(self, nursery: trio.Nursery, name: str,
              task: Callable[[], Awaitable[None]]) -> None:
        self.health[name] = TaskHealth()
        nursery.start_soon(self._keep, name, task, name=f"recfs {self.label} {name}")

    async def _keep(self, name: str, task: Callable[[], Awaitable[None]]) -> None:
        health = self.health[name]
        pause = self.first_pause
        what = f"{self.label}: {name}" if self.label else name
        while True:
            started = trio.current_time()
            try:
                await task()
                return  # a task that ends by itself is done
            except Exception as exc:
                health.failures += 1
                health.last_error = f"{type(exc).__name__}: {exc}"
                health.last_failure = time.time()
                if trio.current_time() - started >= HEALTHY_AFTER:
                    pause = self.first_pause
                log.error("background task %s failed (%s); starting it again in %.0f s",
                          what, health.last_error, pause, exc_info=exc)
            await trio.sleep(pause)
            pause = min(pause * 2, self.max_pause)

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {name: {"failures": h.failures, "last_error": h.last_error,
                       "last_failure": h.last_failure}
                for name, h in self.health.items() if h.failures}
