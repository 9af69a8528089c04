"""The on-disk cache: complete, verified recordings, and the partial files that
downloads write into; bounded in size, and persistent across mounts and crashes.

A file is only ever *complete* by being renamed from partial/ into complete/ after
its length was checked and its data fsynced; so whatever a crash leaves behind in
complete/ is good, and partial/ is thrown away at start (moved aside at once, deleted
in the background).

The index (SQLite: ino, bytes, last access) is what makes start-up fast and eviction
cheap: nothing scans or stats the cache directory before the mount is ready. A
background pass after start-up (`reconcile`) adopts complete files the index missed
(a crash between rename and index write) and forgets rows whose file is gone.

Limits are enforced as bytes are written (`write`), never on a timer: before a write
would pass `max_bytes`, or leave less than `min_free` bytes free on the cache
filesystem, least recently used complete files that nobody has open are deleted.
Files in use are never evicted; when only they are left the cache overshoots, by at
most what is open plus the downloads in flight, and says so in the log. ENOSPC evicts
and carries on; with nothing left to evict the write fails (CacheFull), and the
download is discarded, never committed.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import trio
from cachetools import TTLCache

log = logging.getLogger("recfs.cache")

_INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    ino INTEGER PRIMARY KEY,
    bytes INTEGER NOT NULL,
    last_access REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_access ON files(last_access);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

# A repeated open within this many seconds does not rewrite the access time.
_TOUCH_GRANULARITY = 10.0
# Free space is looked up (statvfs) at least every this many bytes written.
_RESTAT_BYTES = 4 << 20
# At most one "over the limit" warning per this many seconds.
_OVERSHOOT_REPORT_INTERVAL = 30.0


class CacheFull(OSError):
    """No room for the bytes of a download, even after evicting everything evictable."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)


def parse_size(text: str) -> tuple[int, bool]:
    """'20G', '512M', '1048576', '5%' → (number, is_percent). Binary units."""
    value = text.strip().upper()
    if value.endswith("%"):
        number = float(value[:-1])
        if not 0 <= number <= 100:
            raise ValueError(f"percentage out of range: {text!r}")
        return int(number * 100), True  # hundredths of a percent
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    value = value.removesuffix("IB").removesuffix("B")
    factor = 1
    if value and value[-1] in units:
        factor = units[value[-1]]
        value = value[:-1]
    number = float(value)
    if number < 0:
        raise ValueError(f"negative size: {text!r}")
    return int(number * factor), False


def resolve_size(text: str | None, root: Path, default_percent: float) -> int:
    """A size option against the cache filesystem: absolute, or a share of its size."""
    st = os.statvfs(root)
    fs_bytes = st.f_blocks * st.f_frsize
    if text is None:
        return int(fs_bytes * default_percent / 100)
    number, percent = parse_size(text)
    return fs_bytes * number // 10000 if percent else number


def pwrite_all(fd: int, view: memoryview, offset: int, evict: Callable[[int], int]) -> None:
    """pwrite all of *view* at *offset*; on ENOSPC, *evict*(bytes) makes room (it
    returns the bytes freed: none means CacheFull)."""
    while view:
        try:
            written = os.pwrite(fd, view, offset)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            if not evict(len(view)):
                raise CacheFull("cache filesystem full and nothing left to evict") from None
            continue
        view = view[written:]
        offset += written


_HASH_CHUNK = 1 << 20


def fd_sha256(fd: int) -> tuple[int, str]:
    """(size, SHA-256) of an open file, read from its start; blocking: run it in a
    thread. One reused buffer, not a new 1 MiB object per read (as os.pread
    would make); both calls release the GIL."""
    digest = hashlib.sha256()
    buffer = bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    offset = 0
    while count := os.preadv(fd, [buffer], offset):
        digest.update(view[:count])
        offset += count
    return offset, digest.hexdigest()


class DiskCache:
    def __init__(self, root: Path | str, *, max_bytes: int | None = None,
                 min_free: int = 0, index_path: Path | str | None = None,
                 may_evict: Callable[[int], bool] = lambda ino: True):
        """*may_evict*(ino): whether a file may go at all (with an archive: only
        once it is archived, since the cache holds the only copy until then)."""
        self.root = Path(root)
        self.may_evict = may_evict
        # An eviction pass found nothing it may delete: the next ones are skipped
        # until that can have changed (a file completed, unpinned or archived), so a
        # cache of files in use or not archived yet is not walked at every write.
        self._nothing_to_evict = False
        self.complete_dir = self.root / "complete"
        self.partial_dir = self.root / "partial"
        self.complete_dir.mkdir(parents=True, exist_ok=True)
        self._trash: list[Path] = []
        if self.partial_dir.exists():
            # Left by a crash or kill -9: never trusted, never served. Moved aside now
            # (one rename), deleted in the background.
            trash = self.root / f"partial.discard-{os.getpid()}-{time.time_ns()}"
            os.rename(self.partial_dir, trash)
            self._trash.append(trash)
        self._trash += [p for p in self.root.glob("partial.discard-*") if p not in self._trash]
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.min_free = min_free
        self._db = sqlite3.connect(str(index_path or self.root / "index.sqlite"),
                                   isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # The index is a hint that reconcile() repairs: no fsync per access.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_INDEX_SCHEMA)
        root_key = str(self.root.resolve())
        row = self._db.execute("SELECT value FROM meta WHERE key = 'root'").fetchone()
        if row is None or row[0] != root_key:
            # A different cache directory than last time: the rows describe other files.
            self._db.execute("DELETE FROM files")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('root', ?)", (root_key,))
        self.complete_bytes: int = self._db.execute(
            "SELECT COALESCE(SUM(bytes), 0) FROM files").fetchone()[0]
        self.complete_files: int = self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        self.partial_bytes = 0  # written into partial files of running downloads
        self.pinned: dict[int, int] = {}  # ino → open handles: never evicted
        self.evictions = 0
        self.overshoot_max = 0  # largest excess over max_bytes seen, in bytes
        self._last_overshoot_report = -_OVERSHOOT_REPORT_INTERVAL
        # Files whose access time was written in the last _TOUCH_GRANULARITY seconds.
        self._touched: TTLCache[int, bool] = TTLCache(maxsize=4096, ttl=_TOUCH_GRANULARITY)
        # Free space: statvfs at most every _RESTAT_BYTES written (less when close
        # to the floor); in between, an estimate that counts our own writes.
        self._free_estimate: int | None = None
        self._written_since_stat = 0

    def close(self) -> None:
        self._db.close()

    # -- paths -------------------------------------------------------------------

    def complete_path(self, ino: int) -> Path:
        return self.complete_dir / f"{ino:016x}.wav"

    def partial_path(self, ino: int) -> Path:
        return self.partial_dir / f"{ino:016x}.part"

    @property
    def used_bytes(self) -> int:
        return self.complete_bytes + self.partial_bytes

    # -- complete files ------------------------------------------------------------

    def open_complete(self, ino: int, size: int | None) -> int | None:
        """A read-only descriptor of the cached file, or None if it is not cached.
        A file whose length disagrees with the catalog is discarded, never served."""
        path = self.complete_path(ino)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        actual = os.fstat(fd).st_size
        if size is not None and actual != size:
            os.close(fd)
            log.warning("cached %s has the wrong length; discarding it", path.name)
            self._remove(ino)
            return None
        self._touch(ino, actual)
        return fd

    def cached_size(self, ino: int) -> int | None:
        row = self._db.execute("SELECT bytes FROM files WHERE ino = ?", (ino,)).fetchone()
        if row is not None:
            return row[0]
        try:
            return self.complete_path(ino).stat().st_size
        except FileNotFoundError:
            return None

    def is_cached(self, ino: int) -> bool:
        return self.cached_size(ino) is not None

    def pin(self, ino: int) -> None:
        self.pinned[ino] = self.pinned.get(ino, 0) + 1

    def unpin(self, ino: int) -> None:
        count = self.pinned.get(ino, 0) - 1
        if count > 0:
            self.pinned[ino] = count
        else:
            self.pinned.pop(ino, None)
            self._nothing_to_evict = False

    def evictable_changed(self) -> None:
        """A file may be evictable now that was not (it was archived)."""
        self._nothing_to_evict = False

    def _touch(self, ino: int, size: int) -> None:
        now = time.time()
        if ino in self._touched:
            return
        self._touched[ino] = True
        try:
            updated = self._db.execute("UPDATE files SET last_access = ? WHERE ino = ?",
                                       (now, ino)).rowcount
            if not updated:  # a complete file the index missed: adopt it
                self._db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?)", (ino, size, now))
                self.complete_bytes += size
                self.complete_files += 1
        except sqlite3.Error as exc:
            log.warning("cache index: %s", exc)

    def _remove(self, ino: int) -> int:
        """Delete a complete file and its row; returns the bytes it held."""
        row = self._db.execute("SELECT bytes FROM files WHERE ino = ?", (ino,)).fetchone()
        self.complete_path(ino).unlink(missing_ok=True)
        if row is None:
            return 0
        try:
            self._db.execute("DELETE FROM files WHERE ino = ?", (ino,))
        except sqlite3.Error as exc:
            log.warning("cache index: %s", exc)
        self.complete_bytes -= row[0]
        self.complete_files -= 1
        self._touched.pop(ino, None)
        return row[0]

    # -- partial files -------------------------------------------------------------

    def create_partial(self, ino: int) -> int:
        return os.open(self.partial_path(ino),
                       os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    def open_partial(self, ino: int) -> int:
        return os.open(self.partial_path(ino), os.O_RDONLY | os.O_CLOEXEC)

    def write(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        """pwrite all of *data* into a partial file, keeping the limits: evict before
        passing them, evict on ENOSPC, CacheFull when nothing more can go."""
        view = memoryview(data)
        self._make_room(len(view))
        pwrite_all(fd, view, offset, self.evict_for_full_disk)
        self.partial_bytes += len(view)

    def reserve(self, incoming: int) -> None:
        """Count *incoming* bytes that a download's writer thread is about to pwrite
        into its partial file (content/pump.py), keeping the limits as write() does
        (evicting first). What it does not write goes back with release()."""
        self._make_room(incoming)
        self.partial_bytes += incoming

    def release(self, unused: int) -> None:
        self.partial_bytes -= unused

    def evict_for_full_disk(self, need: int) -> int:
        """The writer thread's pwrite met ENOSPC: evict; the bytes freed (0: CacheFull)."""
        return self._evict(need, reason="cache filesystem full")

    def _free_bytes(self, incoming: int = 0) -> int:
        """Free bytes on the cache filesystem, before *incoming* more are written."""
        estimate = self._free_estimate
        if (estimate is None or self._written_since_stat >= _RESTAT_BYTES
                or estimate - incoming < self.min_free + _RESTAT_BYTES):
            st = os.statvfs(self.root)
            estimate = st.f_bavail * st.f_frsize
            self._written_since_stat = 0
        self._written_since_stat += incoming
        self._free_estimate = estimate - incoming
        return estimate

    def _make_room(self, incoming: int) -> None:
        need = 0
        if self.max_bytes is not None:
            need = self.used_bytes + incoming - self.max_bytes
        if self.min_free:
            need = max(need, self.min_free - (self._free_bytes(incoming) - incoming))
        if need <= 0:
            return
        self._evict(need, reason="cache limit")
        if self.max_bytes is not None:
            over = self.used_bytes + incoming - self.max_bytes
            if over > 0:
                self._report_overshoot(over)

    def _report_overshoot(self, over: int) -> None:
        self.overshoot_max = max(self.overshoot_max, over)
        now = time.monotonic()
        if now - self._last_overshoot_report >= _OVERSHOOT_REPORT_INTERVAL:
            self._last_overshoot_report = now
            log.warning("cache is %.1f MiB over its limit of %.1f MiB: the rest is in use or "
                        "not archived yet (%d open files, %.1f MiB of downloads in flight)",
                        over / 2**20,
                        (self.max_bytes or 0) / 2**20, len(self.pinned), self.partial_bytes / 2**20)

    def _evict(self, need: int, reason: str) -> int:
        """Delete least recently used complete files nobody has open, until *need*
        bytes are freed or nothing is left; returns the bytes freed."""
        freed = 0
        if self._nothing_to_evict:
            return 0
        cursor = (-1.0, -1)
        while freed < need:
            rows = self._db.execute(
                "SELECT last_access, ino FROM files WHERE (last_access, ino) > (?, ?) "
                "ORDER BY last_access, ino LIMIT 64", cursor).fetchall()
            if not rows:
                break
            cursor = tuple(rows[-1])
            for _access, ino in rows:
                if ino in self.pinned or not self.may_evict(ino):
                    continue
                gone = self._remove(ino)
                freed += gone
                self.evictions += 1
                log.debug("evicted %016x (%d bytes): %s", ino, gone, reason)
                if freed >= need:
                    break
        if freed:
            self._free_estimate = None  # files went: look again next time
        else:
            self._nothing_to_evict = True
        return freed

    async def commit(self, ino: int, fd: int, size: int) -> None:
        """Make the partial file complete: data on disk first, then the rename, then
        the index.

        The directories are not fsynced: a crash may undo the rename, which leaves
        the file in partial/ (thrown away at start, downloaded again when read) and
        an index row that reconcile() drops; never a name in complete/ whose data
        is not on disk (a directory fsync per download was measurable CPU: README)."""
        await trio.to_thread.run_sync(os.fsync, fd)
        os.rename(self.partial_path(ino), self.complete_path(ino))
        self.partial_bytes -= size
        try:
            self._db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?)", (ino, size, time.time()))
        except sqlite3.Error as exc:
            log.warning("cache index: %s", exc)  # the file is good; reconcile() adopts it
        self.complete_bytes += size
        self.complete_files += 1
        self._nothing_to_evict = False

    def discard_partial(self, ino: int, written: int) -> None:
        """Delete a partial file; *written*: the bytes counted for it (write, reserve)."""
        self.partial_path(ino).unlink(missing_ok=True)
        self.partial_bytes -= written

    # -- background upkeep ---------------------------------------------------------

    async def reconcile(self) -> None:
        """After start-up: delete discarded partial files, adopt complete files the
        index does not know, forget rows whose file is gone. Never fatal: the index
        is a hint, and the mount must not die of a cache directory problem."""
        try:
            await self._reconcile()
        except (OSError, sqlite3.Error) as exc:
            log.warning("cache check after start-up failed: %s", exc)

    async def _reconcile(self) -> None:
        for trash in self._trash:
            await trio.to_thread.run_sync(shutil.rmtree, trash, True)
        self._trash.clear()
        known_before = {ino for (ino,) in self._db.execute("SELECT ino FROM files")}
        on_disk = await trio.to_thread.run_sync(_scan, self.complete_dir)
        adopted = forgotten = 0
        for ino, size in on_disk.items():
            if ino not in known_before and self.complete_path(ino).exists():
                if self._db.execute("SELECT 1 FROM files WHERE ino = ?", (ino,)).fetchone():
                    continue
                self._db.execute("INSERT INTO files VALUES (?, ?, 0)", (ino, size))
                self.complete_bytes += size
                self.complete_files += 1
                adopted += 1
        for ino in known_before - on_disk.keys():
            if ino not in self.pinned and not self.complete_path(ino).exists():
                row = self._db.execute("SELECT bytes FROM files WHERE ino = ?", (ino,)).fetchone()
                if row is not None:
                    self._db.execute("DELETE FROM files WHERE ino = ?", (ino,))
                    self.complete_bytes -= row[0]
                    self.complete_files -= 1
                    forgotten += 1
        if adopted or forgotten:
            log.info("cache index repaired: %d files adopted, %d forgotten", adopted, forgotten)
        if adopted:
            self._nothing_to_evict = False  # the adopted files were never asked about
        if self.max_bytes is not None and self.used_bytes > self.max_bytes:
            self._make_room(0)  # a smaller cache_size than last time

    def usage(self) -> tuple[int, int]:
        """(number of complete files, bytes they hold), from the index."""
        return self.complete_files, self.complete_bytes


def _scan(directory: Path) -> dict[int, int]:
    found: dict[int, int] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            stem, dot, ext = entry.name.partition(".")
            if ext != "wav" or not entry.is_file(follow_symlinks=False):
                continue
            try:
                found[int(stem, 16)] = entry.stat(follow_symlinks=False).st_size
            except (ValueError, FileNotFoundError):
                continue
    return found
