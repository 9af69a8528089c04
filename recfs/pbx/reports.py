"""What the PBX pushes: turning a report body into a call record, or a clear refusal.

Everything here is untrusted input. A report is parsed leniently (duplicate keys:
last wins; v1 `action` or v2 `event`; missing and empty mean the same), and the
recording name is checked with the one rule in names.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from recfs.pbx import clock
from recfs.pbx.names import BadName, check_recording_name

MAX_REPORT_BYTES = 64 * 1024
MAX_FIELD = 256


class BadReport(ValueError):
    pass


@dataclass(frozen=True)
class CallRecord:
    """One recorded call, as the catalog keeps it."""

    name: str
    callid: str = ""
    timestart: str = ""  # PBX-local "YYYY-MM-DD hh:mm:ss", as reported
    caller: str = ""
    callee: str = ""
    type: str = ""
    status: str = ""
    duration: str = ""
    talk_duration: str = ""
    trunk: str = ""
    did: str = ""
    pbx_serial: str = ""

    @property
    def day(self) -> str:
        """The PBX-local date of the call, "YYYY-MM-DD": the directory it lives in
        (from timestart, else the name's stamp, else the callid; clock.call_day)."""
        return clock.call_day(self.timestart, self.name, self.callid)

    @property
    def epoch(self) -> int | None:
        """UTC seconds of the call start: the integer part of the callid. None
        without one: a PBX-local timestart alone needs the PBX's UTC offset, which
        a call record does not know (clock.call_epoch, catalog's call_epoch)."""
        return clock.call_epoch(self.callid, self.timestart, None)


def _last_wins(pairs: list[tuple[str, object]]) -> dict[str, object]:
    return dict(pairs)


def decode_report(body: bytes) -> dict[str, object]:
    """Bytes on the wire to a JSON object, or BadReport."""
    if len(body) > MAX_REPORT_BYTES:
        raise BadReport(f"report larger than {MAX_REPORT_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadReport("report is not UTF-8") from None
    text = text.strip().rstrip("\0")
    try:
        value = json.loads(text, object_pairs_hook=_last_wins)
    except json.JSONDecodeError as exc:
        raise BadReport(f"report is not JSON ({exc.msg} at character {exc.pos})") from None
    except ValueError as exc:  # e.g. a number too long to convert
        raise BadReport(f"report is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BadReport("report is not a JSON object")
    return value


def event_name(report: dict[str, object]) -> str:
    value = report.get("event", report.get("action", ""))
    return value if isinstance(value, str) else ""


def _field(report: dict[str, object], *keys: str) -> str:
    for key in keys:
        value = report.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise BadReport(f"field {key!r} is not a string")
        if len(value) > MAX_FIELD or not value.isprintable():
            raise BadReport(f"field {key!r} is too long or not printable")
        return value
    return ""


def call_from_cdr(cdr: dict[str, object]) -> CallRecord | None:
    """A NewCdr report (or a CDR CSV row) to a CallRecord; None when the call was
    not recorded. BadReport when it cannot be trusted."""
    recording = cdr.get("recording")
    if recording is None or recording == "":
        return None
    try:
        name = check_recording_name(recording)
    except BadName as exc:
        raise BadReport(str(exc)) from None
    return CallRecord(
        name=name,
        callid=_field(cdr, "callid"),
        timestart=_field(cdr, "timestart"),
        caller=_field(cdr, "callfrom"),
        callee=_field(cdr, "callto"),
        type=_field(cdr, "type"),
        status=_field(cdr, "status"),
        duration=_field(cdr, "callduraction", "callduration"),
        talk_duration=_field(cdr, "talkduraction", "talkduration"),
        trunk=_field(cdr, "srctrunkname", "desttrunkname", "dstrunkname", "dsttrcunkname"),
        did=_field(cdr, "didnumber"),
        pbx_serial=_field(cdr, "sn"),
    )
