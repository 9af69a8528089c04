"""A P-Series PBX into the catalog: its recording list (with exact sizes) and its
event 30012, the P-Series counterpart of reports (receiver.py) and CDR back-fill
(backfill.py).

The list is walked newest first from page 1 until a page holds nothing above the
highest id already known (meta `p_last_id`), paging by `total_number` and by what
came back, never by the size asked for. It is walked at mount, after every
(re)connect of the event socket, and after each 30012 event: the event carries no
size, the list does, so a recording enters the catalog with its size and `stat`
never needs a download. The event's own fields (status, trunks, DID, the call's
local start) complete the list's. An event whose recording the list does not
show (yet) is stored as it is: nothing announced is lost.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import trio

from recfs.catalog.database import Catalog
from recfs.catalog.writer import CatalogWriter
from recfs.ingest.pipeline import Ingest
from recfs.pbx.errors import PbxError
from recfs.pbx.precords import (EVENT_NEW_CDR, ListedRecording, call_from_event,
                                event_payload, listed_recording, merged)
from recfs.pbx.pseries import PAGE_SIZE, PSeriesClient
from recfs.pbx.reports import BadReport, CallRecord

log = logging.getLogger("recfs.ingest.list")

LAST_ID_KEY = "p_last_id"
# A walk that finds more pages than this stops (a PBX whose list never ends).
MAX_PAGES = 100_000


@dataclass
class ListStats:
    walks: int = 0
    requests: int = 0
    new: int = 0
    malformed: int = 0
    events: int = 0
    bad_events: int = 0
    last_walk: float | None = None


class RecordingList:
    def __init__(self, client: PSeriesClient, ingest: Ingest, writer: CatalogWriter,
                 catalog: Catalog, page_size: int = PAGE_SIZE):
        self.client = client
        self.ingest = ingest
        self.writer = writer
        self.catalog = catalog
        self.page_size = page_size
        self.stats = ListStats()
        self._lock = trio.Lock()
        self._wanted = 0  # walks asked for; a walk serves every ask made before it began
        self._done = 0
        # name → what an event said of it, until the list shows it.
        self._heard: dict[str, CallRecord] = {}

    def last_id(self) -> int:
        value = self.catalog.meta(LAST_ID_KEY)
        return int(value) if value is not None and value.isdigit() else 0

    async def catch_up(self) -> int:
        """Walk the list for what is new; the number of new recordings. Asks that
        come while a walk runs share the next one."""
        self._wanted += 1
        ask = self._wanted
        async with self._lock:
            if self._done >= ask:
                return 0
            self._done = self._wanted
            return await self._walk()

    async def _walk(self) -> int:
        last = self.last_id()
        # Events heard from now on may name recordings this walk's pages came too
        # early for: they wait for the next walk (their event asked for one).
        announced = set(self._heard)
        highest, new = last, 0
        # The next page is asked for while this one is committed: the PBX and the
        # catalog work at the same time (a first walk of 100,000 recordings).
        send, receive = trio.open_memory_channel[list[ListedRecording]](1)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pages, last, send)
                async with receive:
                    async for fresh in receive:
                        calls = [merged(r.call, self._heard.pop(r.call.name, None))
                                 for r in fresh]
                        added, _known = await self.ingest.add_calls(calls,
                                                                    [r.size for r in fresh])
                        new += added
                        highest = max(highest, *(r.id for r in fresh))
        except BaseExceptionGroup as group:
            raise _single(group) from None
        if highest > last:
            await self.writer.set_meta(LAST_ID_KEY, str(highest))
        self.stats.walks += 1
        self.stats.new += new
        self.stats.last_walk = time.time()
        if new:
            log.info("recording list of %s: %d new recording%s", self.client.base_url, new,
                     "" if new == 1 else "s")
        await self._store_unlisted(announced)
        return new

    async def _pages(self, last: int,
                     send: trio.MemorySendChannel[list[ListedRecording]]) -> None:
        """The list's pages, newest first, as the recordings above *last* in each."""
        async with send:
            seen, page = 0, 1
            while page <= MAX_PAGES:
                total, items = await self.client.list_recordings(page, self.page_size)
                self.stats.requests += 1
                if not items:
                    return
                seen += len(items)
                fresh: list[ListedRecording] = []
                reached_known = False
                for item in items:
                    try:
                        listed = listed_recording(item)
                    except BadReport as exc:
                        self.stats.malformed += 1
                        log.warning("skipped a recording list item: %s", exc)
                        continue
                    if listed.id > last:
                        fresh.append(listed)
                    else:
                        reached_known = True
                if fresh:
                    await send.send(fresh)
                # Newest first: from the first known id on, the rest is known.
                if reached_known or seen >= total:
                    return
                page += 1

    async def _store_unlisted(self, names: set[str] | None = None) -> None:
        """Events (of *names*, or all) whose recording the list did not show: stored
        without a size (learned at the first stat, as on the S-Series)."""
        chosen = set(self._heard) if names is None else names & set(self._heard)
        heard = {name: self._heard.pop(name) for name in chosen}
        calls = [call for name, call in heard.items() if self.catalog.by_name(name) is None]
        if calls:
            log.info("%d announced recording(s) not in the list yet; stored without a size",
                     len(calls))
            await self.ingest.add_calls(calls)

    async def on_frame(self, frame: str) -> None:
        """One frame of the event socket."""
        try:
            kind, msg = event_payload(frame)
            call = call_from_event(msg) if kind == EVENT_NEW_CDR else None
        except BadReport as exc:
            self.stats.bad_events += 1
            log.warning("ignored an event of %s: %s", self.client.base_url, exc)
            return
        if kind != EVENT_NEW_CDR:
            log.debug("ignored event %s", kind)
            return
        self.stats.events += 1
        self.ingest.heard()
        if call is None:
            return  # a call without a recording
        self._heard[call.name] = call
        await self.catch_up_logged()

    async def catch_up_logged(self) -> None:
        """catch_up for the event socket: a failure is logged, and what events
        announced meanwhile is stored without its size, never dropped."""
        try:
            await self.catch_up()
        except PbxError as exc:
            log.warning("recording list of %s not read: %s; again at the next event or "
                        "reconnect", self.client.base_url, exc)
            await self._store_unlisted()


def _single(group: BaseExceptionGroup) -> BaseException:
    """The one failure of a walk (the page reader's or the catalog's), unwrapped
    from trio's group so that callers catch it by its type."""
    leaves: list[BaseException] = []
    todo: list[BaseException] = [group]
    while todo:
        current = todo.pop()
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        else:
            leaves.append(current)
    return leaves[0] if len(leaves) == 1 else group
