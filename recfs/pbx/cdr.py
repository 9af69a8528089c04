"""The CDR CSV that `cdr/download` returns: history, and what reports missed.

Its columns are undocumented (pbx-api.md §5), so the file is read by header name:
a UTF-8 BOM, quoting, CRLF or LF, unknown columns, missing columns and header names
in any case or with stray spaces are all fine. Each row goes through the same rule as
a pushed NewCdr report (`call_from_cdr`), so a name is accepted or refused alike
whichever way it arrived. A row that cannot be trusted is counted and reported,
never imported, and never stops the rest of the file.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from recfs.pbx.reports import BadReport, CallRecord, call_from_cdr

# A header must name at least one of these to be taken for the CDR header.
_KEY_COLUMNS = {"recording", "callid", "timestart"}
# A CDR row is small; a "field" larger than this is a broken file, not a call.
_FIELD_LIMIT = 64 * 1024


class CdrFormatError(ValueError):
    """The body is not a CDR CSV file at all (no recognisable header)."""


@dataclass
class CdrRows:
    calls: list[CallRecord] = field(default_factory=list)
    unrecorded: int = 0  # calls without a recording: nothing to import
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    rows: int = 0


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Keep the good rows; a broken byte becomes a lone surrogate, which the
        # name rule refuses (unprintable), so only the rows that hold one are lost.
        text = data.decode("utf-8", "surrogateescape")
        return text[1:] if text.startswith("\ufeff") else text


def _header_key(name: str | None) -> str:
    return (name or "").strip().strip("\ufeff").lower()


def parse_cdr_csv(data: bytes) -> CdrRows:
    result = CdrRows()
    text = _decode(data)
    if not text.strip():
        return result  # no calls in the range: some firmware sends nothing at all
    csv.field_size_limit(_FIELD_LIMIT)
    reader = csv.reader(io.StringIO(text, newline=""), strict=False)
    header: list[str] | None = None
    line = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            line = reader.line_num
            if header is None:
                raise CdrFormatError(f"CDR file unreadable at line {line}: {exc}") from None
            result.malformed.append((line, f"unreadable CSV: {exc}"))
            continue
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue  # blank lines
        if header is None:
            header = [_header_key(cell) for cell in row]
            if not _KEY_COLUMNS & set(header):
                raise CdrFormatError("CDR file has no header row naming recording, callid or timestart")
            continue
        result.rows += 1
        if len(row) > len(header) and any(cell.strip() for cell in row[len(header):]):
            result.malformed.append((line, f"{len(row)} fields under a header of {len(header)}"))
            continue
        cdr: dict[str, object] = {}
        for key, value in zip(header, row):
            if key and (value.strip() or key not in cdr):
                cdr[key] = value.strip()
        try:
            call = call_from_cdr(cdr)
        except BadReport as exc:
            result.malformed.append((line, str(exc)))
            continue
        if call is None:
            result.unrecorded += 1
        else:
            result.calls.append(call)
    return result
