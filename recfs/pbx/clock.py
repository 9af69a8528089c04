"""The PBX's clock, and every rule about PBX time (pbx-api.md §1, §4).

The PBX reports local time without a zone: `timestart` as "YYYY-MM-DD hh:mm:ss",
a recording name's leading stamp as "YYYYMMDDhhmmss". Only the integer part of a
callid ("1718001234.88") is an absolute instant: the UTC epoch of the call's start.
So a call with both tells the PBX's UTC offset. recfs keeps the latest one
(daylight saving moves it twice a year) in the catalog's meta, and uses it to know
what "now" is on the PBX (back-fill windows) and to date the rare call without a
usable callid. A PBX-local stamp is never read in the host's time zone: the host
need not be where the PBX is.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

log = logging.getLogger("recfs.time")

PBX_TIME = "%Y-%m-%d %H:%M:%S"
NAME_TIME = "%Y%m%d%H%M%S"
# The integer part: the UTC epoch of the call's start.
CALLID = re.compile(r"^(\d{9,11})(?:\.\d+)?$")
# PBX_TIME's shape, fields in range (so that such stamps also sort as the times
# they name); parse_stamp() also checks that the date exists.
LOCAL_STAMP = re.compile(
    r"^\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01]) (?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d$")
# A recording name's leading PBX-local stamp (NAME_TIME), then a dash.
NAME_STAMP = re.compile(r"^(\d{14})-")
# A stamp before this is not a call's date (epochs and the catalog's days start there).
_FIRST_YEAR = 1970
# When nothing dates a call, its directory.
UNKNOWN_DAY = "1970-01-01"
# Real UTC offsets are whole quarter hours within -12:00..+14:00.
_QUARTER = 900
_MAX_OFFSET = 14 * 3600
# Before any offset is known, "now on the PBX" may be anything within this of UTC.
UNKNOWN_SPAN = timedelta(hours=14)

META_KEY = "pbx_utc_offset"


def callid_epoch(callid: object) -> int | None:
    """The UTC epoch of the call's start, from its callid; None if it has none."""
    if not isinstance(callid, str):
        return None
    match = CALLID.match(callid)
    return int(match.group(1)) if match else None


def _checked(text: str, fmt: str) -> datetime | None:
    try:
        value = datetime.strptime(text, fmt)
    except ValueError:
        return None
    return value if value.year >= _FIRST_YEAR else None


def parse_stamp(text: object) -> datetime | None:
    """A PBX-local "YYYY-MM-DD hh:mm:ss" (a `timestart`) as a naive datetime, or
    None when it is not one (wrong shape, no such date or time)."""
    if not isinstance(text, str) or not LOCAL_STAMP.match(text):
        return None
    return _checked(text, PBX_TIME)


def name_stamp(name: object) -> datetime | None:
    """The PBX-local start of the recording from its name's leading stamp, or None."""
    match = NAME_STAMP.match(name) if isinstance(name, str) else None
    return _checked(match.group(1), NAME_TIME) if match else None


def _local(epoch: int, utc_offset: int) -> datetime:
    """The naive PBX-local time of a UTC epoch, given the PBX's UTC offset."""
    return datetime.fromtimestamp(epoch + utc_offset, timezone.utc).replace(tzinfo=None)


def stamp_epoch(local: datetime, utc_offset: int) -> int:
    """The UTC epoch of a naive PBX-local time, given the PBX's UTC offset."""
    return int(local.replace(tzinfo=timezone.utc).timestamp()) - utc_offset


def call_epoch(callid: object, timestart: object, utc_offset: int | None) -> int | None:
    """UTC seconds of a call's start: the callid's integer part; failing that, the
    PBX-local *timestart* less the PBX's UTC offset (seconds east), when known.
    None when neither dates the call."""
    epoch = callid_epoch(callid)
    if epoch is not None:
        return epoch
    local = parse_stamp(timestart)
    if local is None or utc_offset is None:
        return None
    return stamp_epoch(local, utc_offset)


def call_day(timestart: object, name: object = "", callid: object = "",
             utc_offset: int | None = None) -> str:
    """The PBX-local date of a call, "YYYY-MM-DD": from *timestart*; else from the
    recording name's leading stamp; else from the callid (in PBX time if its UTC
    offset is known, else the UTC date); else UNKNOWN_DAY."""
    local = parse_stamp(timestart) or name_stamp(name)
    if local is None:
        epoch = callid_epoch(callid)
        if epoch is not None:
            try:
                local = _local(epoch, utc_offset or 0)
            except (OverflowError, OSError, ValueError):
                local = None
    return local.strftime("%Y-%m-%d") if local is not None else UNKNOWN_DAY


def offset_of(callid: object, timestart: object) -> int | None:
    """Seconds east of UTC that make *timestart* the instant in *callid*, or None."""
    epoch = callid_epoch(callid)
    local = parse_stamp(timestart)
    if epoch is None or local is None:
        return None
    diff = stamp_epoch(local, 0) - epoch
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
    """A PBX-local stamp as a naive datetime; ValueError if it is not one."""
    return datetime.strptime(text, PBX_TIME)


def format_local(value: datetime) -> str:
    return value.strftime(PBX_TIME)
