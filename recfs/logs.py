"""Logging set-up, and the one place that keeps secrets out of log lines.

Tokens and randoms travel in URLs and JSON bodies; libraries (httpx, hypercorn)
log URLs. Rather than trusting every call site, a filter on the root handler
rewrites every record: known secret values, and anything that looks like a
``token=``/``random=``/``password`` value, become ``***``.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import re
import sys
import threading
import time

_PATTERNS = [
    # query strings and form-like text: token=abc, random=abc
    re.compile(r"(?i)((?:token|random|password)=)[^&\s\"',;]+"),
    # JSON: "token": "abc"
    re.compile(r"(?i)(\"(?:token|random|password)\"\s*:\s*\")[^\"]*"),
]

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Make sure *value* never appears in a log line (tokens, randoms, passwords)."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def forget_secret(value: str | None) -> None:
    with _lock:
        _secrets.discard(value or "")


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(r"\1***", text)
    with _lock:
        secrets = list(_secrets)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        clean = redact(message)
        record.msg, record.args = clean, None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class _JournalFormatter(logging.Formatter):
    _PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                 logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        priority = self._PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


class RecentProblems(logging.Handler):
    """Remembers the warnings and errors of the last hour, for `recfs status`."""

    WINDOW = 3600.0

    def __init__(self, keep: int = 1000):
        super().__init__(logging.WARNING)
        self._entries: collections.deque[tuple[float, str]] = collections.deque(maxlen=keep)
        self.addFilter(RedactingFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self._entries.append((record.created, f"{record.levelname} {record.name}: "
                                              f"{record.getMessage()}"))

    def last_hour(self, now: float | None = None) -> list[tuple[float, str]]:
        cutoff = (time.time() if now is None else now) - self.WINDOW
        return [entry for entry in self._entries if entry[0] >= cutoff]


recent_problems = RecentProblems()


class LogBudget:
    """A warning that a peer can provoke at will (a refused connection, a forged
    report) is logged at most *per_minute* times a minute; the rest are counted and
    the count is logged when the next minute begins, so a flood cannot flood the log
    (or the journal's rate limit, which would then swallow other lines)."""

    WINDOW = 60.0

    def __init__(self, logger: logging.Logger, what: str, per_minute: int = 10):
        self._log = logger
        self._what = what
        self._per_window = per_minute
        self._window_start = time.monotonic()
        self._logged = 0
        self._suppressed = 0

    def note(self, detail: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.WINDOW:
            if self._suppressed:
                self._log.warning("%s: %d more in the last minute, not logged one by one",
                                  self._what, self._suppressed)
            self._window_start, self._logged, self._suppressed = now, 0, 0
        if self._logged < self._per_window:
            self._logged += 1
            self._log.warning("%s: " + detail, self._what, *args)
            if self._logged == self._per_window:
                self._log.warning("%s: further ones this minute are only counted", self._what)
        else:
            self._suppressed += 1


class RequesterGoneFilter(logging.Filter):
    """On the ``pyfuse3`` logger: ``fuse_<op>(): fuse_reply_* failed with No such
    file or directory`` becomes INFO.

    The kernel answers a reply with ENOENT when it no longer holds the request: the
    process that made it was interrupted (a signal, Ctrl-C on a slow read) or has
    exited, and the kernel dropped the request. Nothing is wrong in recfs, and
    nobody is left to answer, but pyfuse3 logs it as an ERROR, which would make a
    reader killed at the wrong moment look like a bug (and fail the tests' log
    check). Every other pyfuse3 error -- another errno, another message -- stays an
    error.
    """

    _REPLY_FAILED = re.compile(r"fuse_\w+\(\): fuse_reply_\* failed with (.*)")
    _REQUESTER_GONE = os.strerror(errno.ENOENT)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.ERROR:
            return True
        match = self._REPLY_FAILED.fullmatch(record.getMessage())
        if match is None or match.group(1) != self._REQUESTER_GONE:
            return True
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        # The logger let it through as an ERROR; as INFO it shows only where INFO does.
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


_requester_gone = RequesterGoneFilter()


def setup_logging(level: str = "INFO", files: list[str] | None = None,
                  stderr: bool = True) -> None:
    """Log lines to stderr (unless not *stderr*) and to *files*, every line through
    the redactor."""
    if os.environ.get("JOURNAL_STREAM") and not files:
        # stderr is the journal: it stamps the time itself and reads <N> as the priority.
        formatter: logging.Formatter = _JournalFormatter("%(name)s: %(message)s")
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)] if stderr else []
    handlers += [logging.FileHandler(path) for path in files or []]
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    root.addHandler(recent_problems)
    root.setLevel(level.upper())
    fuse_log = logging.getLogger("pyfuse3")
    if _requester_gone not in fuse_log.filters:
        fuse_log.addFilter(_requester_gone)
    # Per-request lines from the HTTP libraries would drown recfs's own events.
    for noisy in ("httpx", "httpcore", "hpack", "hypercorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
