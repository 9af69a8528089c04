"""The running PBX: state, disk, faults, call generation and report pushing, tied
together. The HTTP layer (app.py) only translates requests into calls on this."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from recfs.sim.calls import CallFactory, local_utc_offset_minutes
from recfs.sim.config import SimConfig
from recfs.sim.faults import Faults
from recfs.sim.reports import Reporter
from recfs.sim.state import SimState
from recfs.sim.store import Store

log = logging.getLogger(__name__)


class Simulator:
    def __init__(
        self,
        config: SimConfig,
        data_dir: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.wall_clock = wall_clock
        self.store = Store(data_dir)
        self.state = SimState(
            {config.user: config.password},
            clock=clock,
            token_ttl=config.token_ttl,
            random_ttl=config.random_ttl,
            lockout_attempts=config.lockout_attempts,
            lockout_seconds=config.lockout_seconds,
        )
        for name, size in self.store.load_recordings().items():
            self.state.add_recording(name, size)
        for cdr in self.store.load_cdrs():
            self.state.add_cdr(cdr)
        self.faults = Faults()
        self.set_faults(config.faults)
        offset = config.utc_offset if config.utc_offset is not None else local_utc_offset_minutes()
        self.calls = CallFactory(
            utc_offset_minutes=offset,
            min_duration=config.min_duration,
            max_duration=config.max_duration,
            next_sequence=CallFactory.next_sequence_after(self.state.cdrs),
            rng=random.Random(config.seed),
        )
        self.reporter = Reporter(
            self.state,
            retry_interval=config.report_retry_interval,
            retry_limit=config.report_retry_limit,
        )
        # Where report deliveries run; set by run_simulator.
        self.nursery: trio.Nursery | None = None
        self._call_lock = trio.Lock()

    # --- faults -----------------------------------------------------------------

    def _apply_ttl_faults(self) -> None:
        self.state.token_ttl = self.faults.peek("token_ttl") or self.config.token_ttl
        self.state.random_ttl = self.faults.peek("random_ttl") or self.config.random_ttl

    def set_faults(self, update: dict[str, Any]) -> None:
        self.faults.merge(update)
        self._apply_ttl_faults()

    def clear_faults(self) -> None:
        self.faults.clear()
        self._apply_ttl_faults()

    # --- calls ------------------------------------------------------------------

    async def make_call(self, *, drop_report: bool = False, **details: Any) -> dict[str, str]:
        """Make one call now (it has just ended), store it, push its NewCdr.

        *details*: duration, caller, callee, call_type, status, recorded (see
        CallFactory.plan). Returns the CDR.
        """
        async with self._call_lock:
            planned = self.calls.plan(self.wall_clock(), **details)
            cdr = planned.cdr
            name = cdr["recording"]
            if name:
                size = await trio.to_thread.run_sync(
                    self.store.write_recording, name, cdr["callid"], planned.recording_seconds
                )
                self.state.add_recording(name, size)
            self.store.append_cdr(cdr)
            self.state.add_cdr(cdr)
            self.state.stats.calls += 1
        dropped = self.faults.take("drop_reports")
        log.info(
            "call %s %s %s→%s %s talk %ss recording %s%s",
            cdr["callid"], cdr["type"], cdr["callfrom"], cdr["callto"], cdr["status"],
            cdr["talkduraction"], name or "-", " (report dropped)" if drop_report or dropped else "",
        )
        if not (drop_report or dropped) and self.nursery is not None:
            for session in self.state.live_sessions():
                self.nursery.start_soon(self.reporter.deliver, session, cdr)
        return cdr

    async def call_loop(self) -> None:
        rate = self.config.calls_per_minute
        if rate <= 0:
            return
        rng = random.Random(self.config.seed)
        mean_gap = 60.0 / rate
        while True:
            await trio.sleep(mean_gap * rng.uniform(0.5, 1.5))
            try:
                await self.make_call()
            except OSError as error:
                # A full disk must not kill the server; the next call may fit.
                log.error("call could not be stored: %s", error)
