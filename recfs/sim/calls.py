"""Plausible calls: who called whom, how it ended, how long, and the CDR and
recording name a S-Series PBX would produce for it. Pure; the Simulator stores
and reports what this plans."""

from __future__ import annotations

import datetime
import random
from dataclasses import dataclass

from recfs.pbx.names import check_recording_name
from recfs.sim.state import CDR_FIELDS

EXTENSIONS = [str(n) for n in range(1001, 1021)]
TRUNK = "SIP-Provider"
DID_NUMBERS = ["0201234567", "0201234568", "0201234569"]
SERIAL = "369900112233"
TYPES = ("Inbound", "Outbound", "Internal")
STATUSES = ("ANSWERED", "NO ANSWER", "BUSY", "FAILED", "VOICEMAIL")
_STATUS_WEIGHTS = (80, 10, 5, 2, 3)
RECORDED_SHARE = 0.9


def local_utc_offset_minutes() -> int:
    offset = datetime.datetime.now().astimezone().utcoffset()
    return int(offset.total_seconds() // 60) if offset else 0


@dataclass(frozen=True)
class PlannedCall:
    cdr: dict[str, str]
    # Seconds of audio to generate (0 when not recorded); the callid seeds the audio.
    recording_seconds: int


class CallFactory:
    def __init__(
        self,
        *,
        utc_offset_minutes: int,
        min_duration: int = 3,
        max_duration: int = 120,
        next_sequence: int = 1,
        rng: random.Random | None = None,
        serial: str = SERIAL,
    ):
        self.zone = datetime.timezone(datetime.timedelta(minutes=utc_offset_minutes))
        self.min_duration = min_duration
        self.max_duration = max(max_duration, min_duration)
        self.sequence = next_sequence
        self.rng = rng or random.Random()
        self.serial = serial

    @staticmethod
    def next_sequence_after(cdrs: list[dict[str, str]]) -> int:
        highest = 0
        for cdr in cdrs:
            _, _, tail = cdr.get("callid", "").partition(".")
            if tail.isdigit():
                highest = max(highest, int(tail))
        return highest + 1

    def _external(self) -> str:
        return "06" + "".join(self.rng.choice("0123456789") for _ in range(8))

    def local_time(self, epoch: float) -> str:
        return datetime.datetime.fromtimestamp(int(epoch), self.zone).strftime("%Y-%m-%d %H:%M:%S")

    def plan(
        self,
        ended_at: float,
        *,
        duration: int | None = None,
        caller: str | None = None,
        callee: str | None = None,
        call_type: str | None = None,
        status: str | None = None,
        recorded: bool | None = None,
    ) -> PlannedCall:
        """A call that ended at *ended_at* (UTC epoch): NewCdr is pushed when a call ends."""
        rng = self.rng
        if call_type is None:
            call_type = rng.choices(TYPES, weights=(45, 35, 20))[0]
        if call_type not in TYPES:
            raise ValueError(f"type must be one of {', '.join(TYPES)}")
        if status is None:
            status = "ANSWERED" if duration is not None else rng.choices(STATUSES, _STATUS_WEIGHTS)[0]
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")

        extension = rng.choice(EXTENSIONS)
        if call_type == "Inbound":
            default_from, default_to = self._external(), extension
        elif call_type == "Outbound":
            default_from, default_to = extension, self._external()
        else:
            default_from = extension
            default_to = rng.choice([e for e in EXTENSIONS if e != extension])
        callfrom = caller or default_from
        callto = callee or default_to

        ring = rng.randint(2, 12)
        if status == "ANSWERED":
            talk = duration if duration is not None else rng.randint(self.min_duration, self.max_duration)
            talk = max(0, int(talk))
        else:
            talk = 0
        if recorded is None:
            recorded = status == "ANSWERED" and rng.random() < RECORDED_SHARE
        recorded = bool(recorded) and status == "ANSWERED"

        start = int(ended_at) - ring - talk
        callid = f"{start}.{self.sequence}"
        self.sequence += 1
        recording = ""
        if recorded:
            # The recording starts when the call is answered, a few seconds in.
            stamp = datetime.datetime.fromtimestamp(start + ring, self.zone).strftime("%Y%m%d%H%M%S")
            recording = check_recording_name(f"{stamp}-{callid}-{callfrom}-{callto}-{call_type}.wav")

        cdr = dict.fromkeys(CDR_FIELDS, "")
        cdr.update(
            callid=callid,
            timestart=self.local_time(start),
            callfrom=callfrom,
            callto=callto,
            callduraction=str(ring + talk),
            talkduraction=str(talk),
            status=status,
            type=call_type,
            recording=recording,
            sn=self.serial,
        )
        if call_type == "Inbound":
            cdr["srctrunkname"] = TRUNK
            cdr["didnumber"] = rng.choice(DID_NUMBERS)
        elif call_type == "Outbound":
            cdr["desttrunkname"] = TRUNK
        return PlannedCall(cdr, talk if recorded else 0)
