"""The on-disk cache: complete, verified recordings, and the partial files that
downloads write into.

A file is only ever *complete* by being renamed from partial/ into complete/ after
its length was checked and its data fsynced; so whatever a crash leaves behind in
complete/ is good, and partial/ is thrown away at start.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import trio

log = logging.getLogger("recfs.cache")


class DiskCache:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.complete_dir = self.root / "complete"
        self.partial_dir = self.root / "partial"
        self.complete_dir.mkdir(parents=True, exist_ok=True)
        if self.partial_dir.exists():
            # Left by a crash or kill -9: never trusted, never served.
            shutil.rmtree(self.partial_dir, ignore_errors=True)
        self.partial_dir.mkdir(parents=True, exist_ok=True)

    def complete_path(self, ino: int) -> Path:
        return self.complete_dir / f"{ino:016x}.wav"

    def partial_path(self, ino: int) -> Path:
        return self.partial_dir / f"{ino:016x}.part"

    def open_complete(self, ino: int, size: int | None) -> int | None:
        """A read-only descriptor of the cached file, or None if it is not cached.
        A file whose length disagrees with the catalog is discarded, never served."""
        path = self.complete_path(ino)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        if size is not None and os.fstat(fd).st_size != size:
            os.close(fd)
            log.warning("cached %s has the wrong length; discarding it", path.name)
            path.unlink(missing_ok=True)
            return None
        return fd

    def cached_size(self, ino: int) -> int | None:
        try:
            return self.complete_path(ino).stat().st_size
        except FileNotFoundError:
            return None

    def create_partial(self, ino: int) -> int:
        return os.open(self.partial_path(ino),
                       os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    def open_partial(self, ino: int) -> int:
        return os.open(self.partial_path(ino), os.O_RDONLY | os.O_CLOEXEC)

    async def commit(self, ino: int, fd: int) -> None:
        """Make the partial file complete: data on disk first, then the rename."""
        await trio.to_thread.run_sync(os.fsync, fd)
        os.rename(self.partial_path(ino), self.complete_path(ino))
        await trio.to_thread.run_sync(_fsync_dir, self.complete_dir)

    def discard_partial(self, ino: int) -> None:
        self.partial_path(ino).unlink(missing_ok=True)

    def usage(self) -> tuple[int, int]:
        """(number of complete files, bytes they hold)."""
        count = total = 0
        with os.scandir(self.complete_dir) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    count += 1
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
        return count, total


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
