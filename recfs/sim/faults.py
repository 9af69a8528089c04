"""Fault switches: ways the simulated PBX misbehaves, set at start or at run time.

A switch may be limited to its next N uses ("times"); for download switches a use is
one recording download, for ``login_error`` one login, for ``drop_reports`` one call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class FaultError(ValueError):
    pass


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", ""):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise FaultError(f"not a boolean: {value!r}")


def _to_count(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise FaultError(f"not a whole number: {value!r}") from None
    if isinstance(value, bool) or number < 0:
        raise FaultError(f"not a whole number >= 0: {value!r}")
    return number


def _to_seconds(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FaultError(f"not a number of seconds: {value!r}") from None
    if isinstance(value, bool) or not number > 0:
        raise FaultError(f"not a positive number of seconds: {value!r}")
    return number


def _to_errno(value: Any) -> str:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit():
        raise FaultError(f"errno must be digits: {value!r}")
    return text


def _to_html_status(value: Any) -> int | bool:
    # true → the page comes with HTTP 200 (what a careless client trusts);
    # a number → that HTTP status; false → off.
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if not 200 <= value <= 599:
            raise FaultError(f"HTTP status out of range: {value}")
        return value
    return 200 if _to_bool(value) else False


PARSERS = {
    "throttle": _to_count,
    "no_content_length": _to_bool,
    "download_error": _to_errno,
    "html_error": _to_html_status,
    "reset_after": _to_count,
    "truncate_after": _to_count,
    "stall_after": _to_count,
    "drop_reports": _to_bool,
    "token_ttl": _to_seconds,
    "random_ttl": _to_seconds,
    "login_error": _to_errno,
    "get_token_error": _to_errno,  # P-Series: get_token answers this errcode
    "bad_events": _to_bool,  # P-Series: garbage event frames before each real one
    "cdr_bom": _to_bool,
}

DOWNLOAD_FAULTS = (
    "throttle",
    "no_content_length",
    "download_error",
    "html_error",
    "reset_after",
    "truncate_after",
    "stall_after",
)


@dataclass
class _Switch:
    value: Any
    times: int | None  # uses left; None = until cleared


@dataclass(frozen=True)
class DownloadFaults:
    throttle: int | None = None
    no_content_length: bool = False
    download_error: str | None = None
    html_error: int | None = None
    reset_after: int | None = None
    truncate_after: int | None = None
    stall_after: int | None = None


class Faults:
    def __init__(self) -> None:
        self._switches: dict[str, _Switch] = {}

    def set(self, name: str, value: Any, times: int | None = None) -> None:
        parser = PARSERS.get(name)
        if parser is None:
            raise FaultError(f"unknown fault {name!r}; known: {', '.join(PARSERS)}")
        if value is None or value is False:
            self._switches.pop(name, None)
            return
        parsed = parser(value)
        if parsed is False:
            self._switches.pop(name, None)
            return
        if times is not None:
            times = _to_count(times)
            if times == 0:
                self._switches.pop(name, None)
                return
        self._switches[name] = _Switch(parsed, times)

    def merge(self, update: Mapping[str, Any]) -> None:
        """Admin-API form: ``{"name": value | {"value": v, "times": n}, "times": n}``;
        a top-level ``times`` applies to every switch in the same update. All or nothing."""
        if not isinstance(update, Mapping):
            raise FaultError("faults must be a JSON object")
        shared_times = update.get("times")
        staged = Faults()
        staged._switches = dict(self._switches)
        for name, spec in update.items():
            if name == "times":
                continue
            if isinstance(spec, Mapping):
                staged.set(name, spec.get("value", True), spec.get("times", shared_times))
            else:
                staged.set(name, spec, shared_times)
        self._switches = staged._switches

    def parse_cli(self, text: str) -> None:
        """``NAME=VALUE`` or ``NAME=VALUE,times=N``; a bare ``NAME`` means true."""
        name, has_value, rest = text.partition("=")
        value_text, times = rest, None
        if ",times=" in rest:
            value_text, _, times_text = rest.rpartition(",times=")
            times = _to_count(times_text)
        self.set(name.strip(), value_text if has_value else True, times)

    def clear(self) -> None:
        self._switches.clear()

    def peek(self, name: str) -> Any:
        switch = self._switches.get(name)
        return None if switch is None else switch.value

    def take(self, name: str) -> Any:
        """The switch's value, spending one use of it."""
        switch = self._switches.get(name)
        if switch is None:
            return None
        if switch.times is not None:
            switch.times -= 1
            if switch.times <= 0:
                del self._switches[name]
        return switch.value

    def take_download(self) -> DownloadFaults:
        values = {name: self.take(name) for name in DOWNLOAD_FAULTS if name in self._switches}
        return DownloadFaults(**values)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: {"value": s.value, "times": s.times} for name, s in self._switches.items()}
