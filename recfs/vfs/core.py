"""The virtual filesystem: names, inodes, attributes and reads, in plain Python.

No pyfuse3 here (the adapter in recfs/fuse_ops.py translates), so all of it is
tested without mounting. Errors are FsError(errno). Metadata answers come from the
catalog and memory; only a file whose size nobody knows yet, or its bytes, can
cause network traffic.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from recfs.catalog.database import Catalog, Listed, Recording
from recfs.catalog.writer import NotCopied
from recfs.content.store import ContentStore, OpenRecording
from recfs.content.transfer import RecordingLost, TransferFailed
from recfs.pbx.errors import PbxError
from recfs.pbx.names import BadName, check_recording_name
from recfs.vfs.tree import DirNode, DirTree, Files
# The root directory's STATUS_XATTR holds the running mount's state as JSON (`recfs
# status`): it works for every user who can see the mount, through the mount itself.
from recfs.vfs.xattrs import SHA256_XATTR, STATUS_XATTR, XATTR_FIELDS, XATTR_PREFIX

log = logging.getLogger("recfs.vfs")

# Recordings never change once complete: the kernel may cache them for long.
FILE_TIMEOUT = 3600.0
# Directories gain entries: the kernel re-asks at least this often.
DIR_TIMEOUT = 1.0
BLOCK_SIZE = 4096
# Seconds by which a commit may come after the time its rows say they were added.
REFRESH_MARGIN = 60.0



@functools.lru_cache(maxsize=1 << 16)
def _dir_name_ok(value: str) -> bool:
    """A type or a number from the PBX becomes a directory name only if it is as
    safe as a recording name (no /, not . or .., printable, not too long).
    Remembered: a listing asks it of every file's numbers and type."""
    try:
        check_recording_name(value)
    except BadName:
        return False
    return True


def _belongs(rec: Recording, files: Files) -> bool:
    kind = files[0]
    if kind == "day":
        return rec.day == files[1]
    if kind == "type-day":
        return rec.call.type == files[1] and rec.day == files[2]
    return files[1] in (rec.call.caller, rec.call.callee)


class FsError(Exception):
    def __init__(self, code: int, message: str = ""):
        self.errno = code
        super().__init__(message or os.strerror(code))


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int
    umask: int = 0o022

    # Computed once: a listing asks for them for every entry.
    @functools.cached_property
    def file_mode(self) -> int:
        return stat.S_IFREG | (0o444 & ~self.umask)

    @functools.cached_property
    def dir_mode(self) -> int:
        return stat.S_IFDIR | (0o555 & ~self.umask)


class Attributes(NamedTuple):
    """A tuple: a walk of the tree makes one for each of millions of files."""

    ino: int
    mode: int
    nlink: int
    size: int
    uid: int
    gid: int
    mtime: float
    timeout: float  # seconds the kernel may trust this entry and these attributes

    @property
    def blocks(self) -> int:
        return (self.size + 511) // 512


def _part(files: Files) -> str:
    """The part of the catalog a directory lists (recfs/catalog/replica.py)."""
    if files[0] == "day":
        return f"day:{files[1]}"
    if files[0] == "type-day":
        return f"day:{files[2]}"
    if files[0] == "number":
        return f"number:{files[1]}"
    return "numbers"


class RecordingsFs:
    def __init__(self, catalog: Catalog, content: ContentStore, owner: Owner, *,
                 status: Callable[[], dict[str, Any]], observe_read: Callable[[float], None],
                 ensure: Callable[[str], Awaitable[None]] | None = None,
                 views: bool = True, top: str = ""):
        """*status*: the mount's state for STATUS_XATTR; *observe_read*: told the
        seconds each read took (metrics); *ensure*: makes sure the catalog holds a
        part before it is listed (CatalogWriter.ensure: a new replica of a shared
        catalog copies directories on first sight); None: it always does."""
        self.catalog = catalog
        self.ensure = ensure
        self.content = content
        self.owner = owner
        self.status = status
        self.observe_read = observe_read
        self.tree = DirTree(views, top)
        self._refreshed_to = 0.0  # summary rows changed before this were seen already
        self.refresh()
        self._handles: dict[int, OpenRecording] = {}
        self._next_fh = itertools.count(1)

    # -- news from the catalog ---------------------------------------------------------

    def refresh(self) -> None:
        """Make the directories of every day (and type's day) in the catalog exist,
        from its small summary tables: called whenever the catalog changed
        (recfs/catalog/watch.py), whoever wrote it. Only rows changed since the last
        time are walked (less a margin for transactions that took long to commit)."""
        since = self._refreshed_to - REFRESH_MARGIN
        for day in self.catalog.days(since):
            self.tree.add_day(day.key, day.last_call)
            self._refreshed_to = max(self._refreshed_to, day.newest)
        if self.tree.by_number is not None:
            for type_day in self.catalog.type_days(since):
                type_, _, day_ = type_day.key.partition("/")
                if _dir_name_ok(type_):
                    self.tree.add_type_day(type_, day_, type_day.last_call)
            # Nearly every call has a number: the latest call with one is the latest.
            self.tree.by_number.mtime = max(self.tree.by_number.mtime, self.tree.root.mtime)

    # -- attributes ------------------------------------------------------------

    def dir_attributes(self, node: DirNode) -> Attributes:
        return Attributes(node.ino, self.owner.dir_mode, 2 + len(node.children), 0,
                          self.owner.uid, self.owner.gid, node.mtime, DIR_TIMEOUT)

    def _file_attributes(self, rec: Recording, size: int | None) -> Attributes:
        call = rec.call
        return self._attributes(rec.ino, self._links(call.caller, call.callee, call.type),
                                rec.mtime, size)

    def _attributes(self, ino: int, nlink: int, mtime: float, size: int | None) -> Attributes:
        # An unknown size is only ever shown with timeout 0, so the kernel asks
        # again (and then waits for the real size) before anyone can use it.
        return Attributes(ino, self.owner.file_mode, nlink, size or 0, self.owner.uid,
                          self.owner.gid, mtime, FILE_TIMEOUT if size is not None else 0.0)

    def _links(self, caller: str, callee: str, type_: str) -> int:
        """How many directories list the recording: its day, and with the views its
        type's day and the directory of each number that took part. The names are
        hard links of one inode, and saying so lets `cp -a`, `tar` and `rsync -H`
        keep one copy of the bytes instead of one for each view."""
        if self.tree.by_number is None:
            return 1
        numbers = {n for n in (caller, callee) if n and _dir_name_ok(n)}
        return 1 + int(_dir_name_ok(type_)) + len(numbers)

    async def _exact_file_attributes(self, rec: Recording) -> Attributes:
        try:
            size = await self.content.size(rec)
        except RecordingLost:
            raise FsError(errno.ENODATA) from None  # logged when it was found lost
        except (TransferFailed, PbxError) as exc:
            log.warning("size of %s unknown: %s", rec.name, exc)
            raise FsError(errno.EIO) from None
        return self._file_attributes(rec, size)

    def _recording(self, ino: int) -> Recording:
        rec = self.catalog.by_ino(ino)
        if rec is None:
            raise FsError(errno.ENOENT)
        return rec

    async def getattr(self, ino: int) -> Attributes:
        node = self.tree.get(ino)
        if node is not None:
            return self.dir_attributes(node)
        return await self._exact_file_attributes(self._recording(ino))

    async def lookup(self, parent: int, name: str) -> Attributes:
        if name == "." and self.tree.get(parent) is None:
            # The kernel asks "." of any inode, files included, to turn an NFS (or
            # open_by_handle_at) file handle back into an inode it has forgotten. A
            # handle is no reason to download: the known size or none (timeout 0).
            handled = self._recording(parent)
            return self._file_attributes(handled, self.content.known_size(handled))
        node = self._dir(parent)
        if name == ".":
            return self.dir_attributes(node)
        if name == ".." and node.parent in self.tree.nodes:
            return self.dir_attributes(self.tree.nodes[node.parent])
        child = node.children.get(name)
        if child is not None:
            return self.dir_attributes(self.tree.nodes[child])
        if node.files == ("numbers",):
            known = None
            if _dir_name_ok(name):
                await self._have(("number", name))
                known = self.catalog.number(name)
            if known is not None:
                return self.dir_attributes(self.tree.number_node(name, known[1]))
        elif node.files is not None:
            await self._have(node.files)
            rec = self.catalog.by_name(name)
            if rec is not None and _belongs(rec, node.files):
                return await self._exact_file_attributes(rec)
        raise FsError(errno.ENOENT)

    def _dir(self, ino: int) -> DirNode:
        node = self.tree.get(ino)
        if node is None:
            raise FsError(errno.ENOTDIR if self.catalog.by_ino(ino) else errno.ENOENT)
        return node

    # -- listing ----------------------------------------------------------------

    async def _have(self, files: Files) -> None:
        if self.ensure is None:
            return
        try:
            await self.ensure(_part(files))
        except NotCopied as exc:
            log.warning("cannot list %s: %s", "/".join(files[1:]) or files[0], exc)
            raise FsError(errno.EIO) from None

    async def opendir(self, ino: int) -> int:
        node = self._dir(ino)
        if node.files is not None:
            await self._have(node.files)
        return ino

    def readdir(self, ino: int, after: int) -> Iterator[tuple[str, Attributes, int]]:
        """(name, attributes, cursor) from after cursor *after*; cursors are inode
        numbers, which stay valid while entries are added during a listing. Never
        waits: a size not known yet is shown with timeout 0 (see _file_attributes)."""
        node = self._dir(ino)
        subdirs = sorted((child, name) for name, child in node.children.items())
        for child, name in subdirs:
            if child > after:
                yield name, self.dir_attributes(self.tree.nodes[child]), child
        if node.files == ("numbers",):
            yield from self._list_numbers(after)
        elif node.files is not None:
            yield from self._list_files(node.files, after)

    def _list_files(self, files: Files, after: int) -> Iterator[tuple[str, Attributes, int]]:
        cursor = after
        known_size = self.content.known_size
        while True:
            # Each kernel readdir call takes what fits in its buffer (300 to 600
            # entries) and comes back with the last cursor: what a batch has left
            # over is read again, so batches are not much larger than that.
            batch = self._entries(files, cursor)
            if not batch:
                return
            for entry in batch:
                yield entry.name, self._attributes(
                    entry.ino, self._links(entry.caller, entry.callee, entry.type),
                    entry.mtime, known_size(entry)), entry.ino
            cursor = batch[-1].ino

    def _entries(self, files: Files, cursor: int) -> list[Listed]:
        kind = files[0]
        if kind == "day":
            return self.catalog.day_entries(files[1], cursor)
        if kind == "type-day":
            return self.catalog.type_day_entries(files[1], files[2], cursor)
        return self.catalog.number_entries(files[1], cursor)

    def _list_numbers(self, after: int) -> Iterator[tuple[str, Attributes, int]]:
        # The cursor is the numbers table's rowid: stable while numbers are added.
        cursor = after
        while True:
            batch = self.catalog.numbers(cursor)
            if not batch:
                return
            for rowid, number, last_call in batch:
                if _dir_name_ok(number):
                    node = self.tree.number_node(number, last_call)
                    yield number, self.dir_attributes(node), rowid
            cursor = batch[-1][0]

    # -- contents ---------------------------------------------------------------

    def open(self, ino: int, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT):
            raise FsError(errno.EROFS)
        if self.tree.get(ino) is not None:
            raise FsError(errno.EISDIR)
        rec = self._recording(ino)
        try:
            handle = self.content.open(rec)
        except RecordingLost:
            # Neither the PBX nor the archive has it: "No data available", at once.
            raise FsError(errno.ENODATA) from None
        except OSError as exc:
            log.error("cannot open %s: %s", rec.name, exc)
            raise FsError(errno.EIO) from None
        fh = next(self._next_fh)
        self._handles[fh] = handle
        return fh

    def is_cached_open(self, fh: int) -> bool:
        """True if the file is served from the complete cache (the kernel may keep
        its pages across opens)."""
        handle = self._handles.get(fh)
        return handle is not None and handle.transfer is None

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self._handles.get(fh)
        if handle is None:
            raise FsError(errno.EBADF)
        started = time.monotonic()
        try:
            data = await handle.read(offset, size)
            self.observe_read(time.monotonic() - started)
            return data
        except RecordingLost:
            raise FsError(errno.ENODATA) from None
        except (TransferFailed, PbxError) as exc:
            log.warning("read of %s failed: %s", handle.rec.name, exc)
            raise FsError(errno.EIO) from None
        except OSError as exc:
            log.error("read of %s failed: %s", handle.rec.name, exc)
            raise FsError(errno.EIO) from None

    def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is not None:
            handle.close()

    # -- extended attributes: the CDR, for people and backup tools ---------------------

    def listxattr(self, ino: int) -> list[str]:
        if self.tree.get(ino) is not None:
            return []  # STATUS_XATTR is read by name only
        rec = self._recording(ino)
        names = [XATTR_PREFIX + field for field in XATTR_FIELDS if getattr(rec.call, field)]
        return names + ([SHA256_XATTR] if rec.sha256 else [])

    def getxattr(self, ino: int, name: str) -> bytes:
        if ino == self.tree.root_ino and name == STATUS_XATTR:
            return json.dumps(self.status(), sort_keys=True).encode()
        if self.tree.get(ino) is None and name == SHA256_XATTR:
            digest = self._recording(ino).sha256
            if digest:
                return digest.encode()
        elif self.tree.get(ino) is None and name.startswith(XATTR_PREFIX):
            field = name[len(XATTR_PREFIX):]
            if field in XATTR_FIELDS:
                value = getattr(self._recording(ino).call, field)
                if value:
                    return value.encode("utf-8")
        raise FsError(errno.ENODATA)

    # -- the filesystem as a whole ------------------------------------------------

    def statfs(self) -> dict[str, int]:
        files = self.catalog.count()
        # Known sizes only (a recording never downloaded has none yet); read-only, so
        # nothing is free. `df` and Samba clients then show what the mount holds.
        blocks = -(-self.catalog.known_bytes() // BLOCK_SIZE)
        return {"bsize": BLOCK_SIZE, "frsize": BLOCK_SIZE, "blocks": blocks, "bfree": 0,
                "bavail": 0, "files": files + len(self.tree.nodes), "ffree": 0, "namemax": 255}
