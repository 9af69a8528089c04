"""P-Series recordings as call records: an item of `recording/list` (with its
exact size) and the `msg` of event 30012 "New CDR". Untrusted input, checked with
the same rules as S-Series reports (reports.py, names.py).

A list item's `time` is in the PBX's *display format* (01/12/2022: which is the
day?), so it is not read: the call's id and local start come from the file name,
`YYYYMMDDhhmmss-<callid>-<from>-<to>-<Type>.wav`, as on the S-Series.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from recfs.pbx.reports import MAX_REPORT_BYTES, BadReport, CallRecord, call_from_cdr

EVENT_NEW_CDR = 30012
_NAME_CALLID = re.compile(r"^\d{14}-(\d{9,11}(?:\.\d+)?)-")
# "Evelyn<5566>": the number inside the brackets.
_NAMED_NUMBER = re.compile(r"<([^<>]*)>\s*$")


@dataclass(frozen=True)
class ListedRecording:
    id: int
    call: CallRecord
    size: int | None


def callid_of_name(name: str) -> str:
    match = _NAME_CALLID.match(name)
    return match.group(1) if match else ""


def _number(value: object) -> object:
    """`Name<number>` → number; anything else as it is (checked by call_from_cdr)."""
    if isinstance(value, str):
        match = _NAMED_NUMBER.search(value)
        if match and match.group(1).strip():
            return match.group(1).strip()
        return value.strip()
    return value


def _blank(value: object) -> object:
    # The PBX writes " " for an empty value.
    return "" if isinstance(value, str) and not value.strip() else value


def listed_recording(item: dict[str, object]) -> ListedRecording:
    """One `recording/list` item; BadReport when it cannot be trusted."""
    ident = item.get("id")
    if isinstance(ident, str) and ident.isdigit():
        ident = int(ident)
    if not isinstance(ident, int) or isinstance(ident, bool) or ident < 0:
        raise BadReport("list item without an integer id")
    size = item.get("size")
    if isinstance(size, str) and size.isdigit():
        size = int(size)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        size = None  # learned at the first stat, as on the S-Series
    name = item.get("file")
    call = call_from_cdr({
        "recording": _blank(name),
        "callid": callid_of_name(name) if isinstance(name, str) else "",
        "callfrom": _number(_blank(item.get("call_from"))),
        "callto": _number(_blank(item.get("call_to"))),
        "type": _blank(item.get("call_type")),
        "callduration": _blank(item.get("duration")),
    })
    if call is None:
        raise BadReport(f"list item {ident} names no file")
    return ListedRecording(ident, call, size)


def event_payload(frame: str) -> tuple[int | None, dict[str, object]]:
    """An event frame: (type, msg as an object). `msg` comes as a JSON string
    (30011/30012 in the guide) or an object; BadReport for anything else."""
    if len(frame) > MAX_REPORT_BYTES:
        raise BadReport(f"event frame larger than {MAX_REPORT_BYTES} bytes")
    try:
        outer = json.loads(frame)
    except ValueError as exc:
        raise BadReport(f"event frame is not JSON ({exc})") from None
    if not isinstance(outer, dict):
        raise BadReport("event frame is not a JSON object")
    kind = outer.get("type")
    if isinstance(kind, str) and kind.isdigit():
        kind = int(kind)
    if not isinstance(kind, int) or isinstance(kind, bool):
        return None, {}
    msg = outer.get("msg", {})
    if isinstance(msg, str):
        try:
            msg = json.loads(msg)
        except ValueError as exc:
            raise BadReport(f"event {kind}: msg is not JSON ({exc})") from None
    if not isinstance(msg, dict):
        raise BadReport(f"event {kind}: msg is not a JSON object")
    if "sn" not in msg and isinstance(outer.get("sn"), str):
        msg = {**msg, "sn": outer["sn"]}
    return kind, msg


def call_from_event(msg: dict[str, object]) -> CallRecord | None:
    """Event 30012's fields as a call record; None when the call was not recorded."""
    recording = _blank(msg.get("recording"))
    callid = _blank(msg.get("call_id"))
    if not callid and isinstance(recording, str):
        callid = callid_of_name(recording)
    return call_from_cdr({
        "recording": recording,
        "callid": callid,
        "timestart": _blank(msg.get("time_start")),
        "callfrom": _number(_blank(msg.get("call_from"))),
        "callto": _number(_blank(msg.get("call_to"))),
        "callduration": _blank(msg.get("call_duration")),
        "talkduration": _blank(msg.get("talk_duration")),
        "srctrunkname": _blank(msg.get("src_trunk_name")),
        "desttrunkname": _blank(msg.get("dst_trunk_name")),
        "status": _blank(msg.get("status")),
        "type": _blank(msg.get("type")),
        "didnumber": _blank(msg.get("did_number")),
        "sn": _blank(msg.get("sn")),
    })


def merged(listed: CallRecord, event: CallRecord | None) -> CallRecord:
    """The list's record completed by the event's fields (the event knows the
    status, trunks, DID and the call's local start; the list does not)."""
    if event is None:
        return listed
    fields = {key: value for key, value in vars(event).items() if value and key != "name"}
    return replace(listed, **fields)
