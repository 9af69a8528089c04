"""What the benchmark scripts share: timing, CPU, dd, and the simulator's bytes per second.
Imported by scripts/bench_*.py (their own folder is on sys.path when run)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

SECOND = 16000  # bytes per second of 8 kHz 16-bit mono
MiB = 1 << 20


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def dd(path: Path) -> None:
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def seconds_for(size: int) -> int:
    """Seconds of the simulator's audio that make a WAV of about *size* bytes."""
    return max(1, (size - 44) // SECOND)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads, so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
