"""Progress of long jobs (`recfs backfill`, prefetch=all) on the terminal.

Code that does the work reports to a Progress and never writes to the terminal
itself; whoever starts the job decides the display: a tqdm bar on stderr (with
rate and ETA) when stderr is a terminal, else nothing at all (a journal or a log
file gets the job's own log lines instead). While a bar is shown, log lines to
the console go through tqdm, so that they print above the bar instead of
through it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Mapping
from typing import IO, Any, Protocol

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


class Progress(Protocol):
    def total(self, n: float) -> None:
        """How much work there is, in the job's units; the count starts (again) at 0."""

    def advance(self, n: float = 1, counts: Mapping[str, object] | None = None) -> None:
        """*n* more units done; *counts*: the job's tallies so far, to show beside."""

    def close(self) -> None:
        """The job ended (or stopped): leave the last state on the screen."""


class NoProgress:
    """Nothing is shown."""

    def total(self, n: float) -> None:
        pass

    def advance(self, n: float = 1, counts: Mapping[str, object] | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class _Bar(tqdm):
    # No monitor thread: it would redraw the bar from outside the trio loop.
    monitor_interval = 0


# Console log lines go through tqdm while any bar on stderr is open.
_redirect: contextlib.AbstractContextManager[Any] | None = None
_open_bars = 0


def _redirect_logging() -> None:
    global _redirect, _open_bars
    _open_bars += 1
    if _redirect is None:
        _redirect = logging_redirect_tqdm([logging.getLogger()], tqdm_class=_Bar)
        _redirect.__enter__()


def _restore_logging() -> None:
    global _redirect, _open_bars
    _open_bars -= 1
    if _open_bars == 0 and _redirect is not None:
        redirect, _redirect = _redirect, None
        redirect.__exit__(None, None, None)


class TerminalProgress:
    """A tqdm bar on *stream*; *options* go to tqdm (unit, delay, bar_format...).
    The bar starts at once; total() starts it over (a job restarted after a failure),
    and after close() a new one."""

    def __init__(self, description: str, *, total: float | None = None,
                 stream: IO[str] | None = None, **options: Any):
        self._description = description
        self._stream = sys.stderr if stream is None else stream
        self._options = options
        self._bar: tqdm | None = None
        self._open(total)

    def _open(self, total: float | None) -> tqdm:
        bar = self._bar = _Bar(total=total, desc=self._description, file=self._stream,
                               dynamic_ncols=True, leave=True, **self._options)
        if self._stream is sys.stderr:
            _redirect_logging()
        return bar

    def total(self, n: float) -> None:
        if self._bar is None:
            self._open(n)
        else:
            self._bar.reset(total=n)

    def advance(self, n: float = 1, counts: Mapping[str, object] | None = None) -> None:
        bar = self._bar if self._bar is not None else self._open(None)
        if counts is not None:
            bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in counts.items()), refresh=False)
        bar.update(n)

    def close(self) -> None:
        bar, self._bar = self._bar, None
        if bar is None:
            return
        try:
            bar.close()
        finally:
            if self._stream is sys.stderr:
                _restore_logging()


def is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def terminal_progress(description: str, *, enabled: bool = True, stream: IO[str] | None = None,
                      **options: Any) -> Progress:
    """A bar on *stream* (stderr) if *enabled* and the stream is a terminal; else a
    Progress that shows nothing."""
    stream = sys.stderr if stream is None else stream
    if enabled and is_terminal(stream):
        return TerminalProgress(description, stream=stream, **options)
    return NoProgress()
