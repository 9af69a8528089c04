"""The PBX's clock: it reports local time without a zone (pbx-api.md §1).

The integer part of a callid is the UTC epoch of the call's start and `timestart`
is the same instant in PBX-local time, so every call tells the PBX's UTC offset.
recfs keeps the latest one (daylight saving moves it twice a year) in the catalog's
meta, and uses it to know what "now" is on the PBX (back-fill windows) and to date
the rare call without a usable callid. mtimes come from the callid itself: true UTC.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

log = logging.getLogger("recfs.time")

PBX_TIME = "%Y-%m-%d %H:%M:%S"
_CALLID = re.compile(r"^(\d{9,11})(?:\.\d+)?$")
_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
# Real UTC offsets are whole quarter hours within -12:00..+14:00.
_QUARTER = 900
_MAX_OFFSET = 14 * 3600
# Before any offset is known, "now on the PBX" may be anything within this of UTC.
UNKNOWN_SPAN = timedelta(hours=14)

META_KEY = "pbx_utc_offset"


def offset_of(callid: object, timestart: object) -> int | None:
    """Seconds east of UTC that make *timestart* the instant in *callid*, or None."""
    if not isinstance(callid, str) or not isinstance(timestart, str):
        return None
    match = _CALLID.match(callid)
    if not match or not _STAMP.match(timestart):
        return None
    try:
        local = datetime.strptime(timestart, PBX_TIME).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    diff = int(local.timestamp()) - int(match.group(1))
    rounded = round(diff / _QUARTER) * _QUARTER
    if abs(diff - rounded) > 120 or abs(rounded) > _MAX_OFFSET:
        return None
    return rounded


class PbxClock:
    def __init__(self, offset: int | None = None, save: Callable[[int], None] | None = None,
                 now: Callable[[], float] = time.time):
        self.offset = offset
        self._save = save
        self._now = now

    def learn(self, callid: object, timestart: object) -> None:
        offset = offset_of(callid, timestart)
        if offset is None or offset == self.offset:
            return
        if self.offset is not None:
            log.info("the PBX's UTC offset changed from %+.2f h to %+.2f h", self.offset / 3600,
                     offset / 3600)
        else:
            log.info("the PBX's clock is UTC%+.2f h", offset / 3600)
        self.offset = offset
        if self._save is not None:
            self._save(offset)

    def local_now(self) -> datetime:
        """The PBX's local time now (naive), if its offset is known; else UTC now."""
        utc = datetime.fromtimestamp(self._now(), timezone.utc).replace(tzinfo=None)
        return utc + timedelta(seconds=self.offset or 0)

    def now_bounds(self) -> tuple[datetime, datetime]:
        """(earliest, latest) the PBX's local "now" can be."""
        now = self.local_now()
        if self.offset is None:
            return now - UNKNOWN_SPAN, now + UNKNOWN_SPAN
        return now, now


def parse_local(text: str) -> datetime:
    return datetime.strptime(text, PBX_TIME)


def format_local(value: datetime) -> str:
    return value.strftime(PBX_TIME)
