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
        self._poked = trio.Event()

    def poke(self) -> None:
        self._poked.set()

    async def follow(self, changed: Callable[[], None]) -> None:
        """Call *changed* after every change of the catalog (coalesced); runs until
        cancelled."""
        seen = self.catalog.data_version()
        while True:
            with trio.move_on_after(self.interval):
                await self._poked.wait()
            self._poked = trio.Event()
            version = self.catalog.data_version()
            if version != seen:
                seen = version
                changed()
