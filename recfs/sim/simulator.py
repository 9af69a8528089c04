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
from recfs.sim.state import SimState, call_started
from recfs.sim.store import Store

log = logging.getLogger(__name__)

# How often the age rule (--keep-days) is checked besides after each call.
CLEANUP_INTERVAL = 60.0


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
            missing_errno=config.missing_errno,
        )
        for name, size in self.store.load_recordings().items():
            # A name that does not tell its call's start ages by its file's time.
            started = call_started(name)
            self.state.add_recording(name, size, started if started is not None else self.store.recording_mtime(name))
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
        self._delete_lock = trio.Lock()
        # Who hears of each call as it ends (the P-Series event sockets).
        self._call_watchers: list[trio.MemorySendChannel[dict[str, str]]] = []

    @property
    def watching(self) -> bool:
        """Whether anyone hears of calls as they end."""
        return bool(self._call_watchers)

    def watch_calls(self) -> trio.MemoryReceiveChannel[dict[str, str]]:
        """The CDR of every call made from now on, until the receiver is closed."""
        send, receive = trio.open_memory_channel[dict[str, str]](1000)
        self._call_watchers.append(send)
        return receive

    def _tell_watchers(self, cdr: dict[str, str]) -> None:
        for watcher in list(self._call_watchers):
            try:
                watcher.send_nowait(cdr)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._call_watchers.remove(watcher)
            except trio.WouldBlock:
                log.warning("a call watcher is 1000 calls behind; it misses call %s",
                            cdr.get("callid"))

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
        # The auto-cleanup runs before the report goes out: with a small
        # --keep-recordings the report may name a file that is already gone.
        await self.cleanup()
        dropped = self.faults.take("drop_reports")
        log.info(
            "call %s %s %s→%s %s talk %ss recording %s%s",
            cdr["callid"], cdr["type"], cdr["callfrom"], cdr["callto"], cdr["status"],
            cdr["talkduraction"], name or "-", " (report dropped)" if drop_report or dropped else "",
        )
        if not (drop_report or dropped):
            self._tell_watchers(cdr)
        if not (drop_report or dropped) and self.nursery is not None:
            for session in self.state.live_sessions():
                self.nursery.start_soon(self.reporter.deliver, session, cdr)
        return cdr

    # --- deleting recordings (the PBX's auto-cleanup) ------------------------------

    async def delete_recordings(self, names: list[str], why: str) -> list[str]:
        """Delete these recordings now, from disk (durably) and from the state;
        their CDRs stay. Returns those deleted, oldest first; unknown names are
        skipped."""
        async with self._delete_lock:
            wanted = set(names)
            present = [name for name in self.state.recordings_oldest_first() if name in wanted]
            if not present:
                return []
            # The state first, so the API never hands out a random for a file
            # being unlinked; the unlink is what a restart sees. A download that
            # has already opened the file finishes; later ones get the missing errno.
            was = {name: (self.state.recordings[name], self.state.recording_started[name]) for name in present}
            for name in present:
                self.state.remove_recording(name)
            deleted, failed = await trio.to_thread.run_sync(self.store.delete_recordings, present)
            for name in failed:  # still on disk (logged): still there
                size, started = was[name]
                self.state.add_recording(name, size, started)
                self.state.stats.recordings_deleted -= 1
            log.info("deleted %d recording(s) (%s)%s", len(deleted), why,
                     ": " + ", ".join(deleted) if len(deleted) <= 5 else "")
            return deleted

    def cleanup_due(self) -> list[str]:
        return self.state.recordings_to_clean(
            keep_count=self.config.keep_recordings, keep_days=self.config.keep_days, now=self.wall_clock()
        )

    async def cleanup(self) -> list[str]:
        """The auto-cleanup, as configured (nothing when both rules are off)."""
        if self.config.keep_recordings is None and self.config.keep_days is None:
            return []
        due = self.cleanup_due()
        return await self.delete_recordings(due, "auto-cleanup") if due else []

    async def cleanup_loop(self) -> None:
        """At start and once a minute, so recordings age out with no calls too."""
        if self.config.keep_recordings is None and self.config.keep_days is None:
            return
        while True:
            try:
                await self.cleanup()
            except OSError as error:
                log.error("auto-cleanup failed: %s", error)
            await trio.sleep(CLEANUP_INTERVAL)

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
