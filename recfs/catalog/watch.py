"""How readers of the catalog learn that it changed: the one way news travels from
the catalog to the tree.

The writer of this process pokes the watch after each commit, so that its changes
are seen at once; commits of other processes (`recfs backfill` beside a mount) are
seen by asking SQLite whether anything changed (`PRAGMA data_version`, which costs
microseconds and touches no table) every `interval` seconds.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from recfs.catalog.database import Catalog

INTERVAL = 1.0


class CatalogWatch:
    def __init__(self, catalog: Catalog, interval: float = INTERVAL):
        self.catalog = catalog
        self.interval = interval
        self._followers: set[trio.Event] = set()  # one per follow(): each is woken

    def poke(self) -> None:
        for poked in self._followers:
            poked.set()

    async def follow(self, changed: Callable[[], None]) -> None:
        """Call *changed* after every change of the catalog (coalesced); runs until
        cancelled. Any number may follow (the tree, the archiver)."""
        seen = self.catalog.data_version()
        poked = trio.Event()
        self._followers.add(poked)
        try:
            while True:
                with trio.move_on_after(self.interval):
                    await poked.wait()
                self._followers.discard(poked)
                poked = trio.Event()
                self._followers.add(poked)
                version = self.catalog.data_version()
                if version != seen:
                    seen = version
                    changed()
        finally:
            self._followers.discard(poked)
