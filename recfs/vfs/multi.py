"""Several PBXs in one mount: each PBX's RecordingsFs hangs under a top-level
directory of its own name, and this class sends each call to the one that owns the
inode. Inodes never clash: each PBX derives its directory and file inodes with its
name mixed in.

It answers the same calls as RecordingsFs, so the pyfuse3 adapter serves either.
"""

from __future__ import annotations

import errno
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

from recfs.vfs.xattrs import STATUS_XATTR
from recfs.vfs.core import Attributes, FsError, Owner, RecordingsFs
from recfs.vfs.tree import ROOT_INO


class MultiFs:
    def __init__(self, parts: dict[str, RecordingsFs], owner: Owner, *,
                 status: Callable[[], dict[str, Any]]):
        self.parts = parts
        self.owner = owner
        self.status = status
        self._tops = {fs.tree.root_ino: name for name, fs in parts.items()}
        self._handles: dict[int, tuple[RecordingsFs, int]] = {}
        self._next_fh = itertools.count(1)

    # -- finding the owner ---------------------------------------------------------

    def _owner(self, ino: int) -> RecordingsFs:
        for fs in self.parts.values():
            if fs.tree.get(ino) is not None:
                return fs
        for fs in self.parts.values():
            if fs.catalog.by_ino(ino) is not None:
                return fs
        raise FsError(errno.ENOENT)

    def _root_attributes(self) -> Attributes:
        mtime = max(fs.tree.root.mtime for fs in self.parts.values())
        return Attributes(ROOT_INO, self.owner.dir_mode, 2 + len(self.parts), 0, self.owner.uid,
                          self.owner.gid, mtime, 1.0)

    # -- the calls -------------------------------------------------------------------

    async def getattr(self, ino: int) -> Attributes:
        if ino == ROOT_INO:
            return self._root_attributes()
        return await self._owner(ino).getattr(ino)

    async def lookup(self, parent: int, name: str) -> Attributes:
        if parent == ROOT_INO:
            if name in (".", ".."):
                return self._root_attributes()
            fs = self.parts.get(name)
            if fs is None:
                raise FsError(errno.ENOENT)
            return await fs.getattr(fs.tree.root_ino)
        if name == ".." and parent in self._tops:
            return self._root_attributes()
        return await self._owner(parent).lookup(parent, name)

    async def opendir(self, ino: int) -> int:
        if ino != ROOT_INO:
            await self._owner(ino).opendir(ino)
        return ino

    def readdir(self, ino: int, after: int) -> Iterator[tuple[str, Attributes, int]]:
        if ino != ROOT_INO:
            yield from self._owner(ino).readdir(ino, after)
            return
        tops = sorted((fs.tree.root_ino, name, fs) for name, fs in self.parts.items())
        for top_ino, name, fs in tops:
            if top_ino > after:
                yield name, fs.dir_attributes(fs.tree.root), top_ino

    def open(self, ino: int, flags: int) -> int:
        fs = self._owner(ino)
        inner = fs.open(ino, flags)
        fh = next(self._next_fh)
        self._handles[fh] = (fs, inner)
        return fh

    def _handle(self, fh: int) -> tuple[RecordingsFs, int]:
        found = self._handles.get(fh)
        if found is None:
            raise FsError(errno.EBADF)
        return found

    def is_cached_open(self, fh: int) -> bool:
        fs, inner = self._handle(fh)
        return fs.is_cached_open(inner)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        fs, inner = self._handle(fh)
        return await fs.read(inner, offset, size)

    def release(self, fh: int) -> None:
        found = self._handles.pop(fh, None)
        if found is not None:
            found[0].release(found[1])

    def listxattr(self, ino: int) -> list[str]:
        return [] if ino == ROOT_INO else self._owner(ino).listxattr(ino)

    def getxattr(self, ino: int, name: str) -> bytes:
        if ino == ROOT_INO:
            if name == STATUS_XATTR:
                return json.dumps(self.status(), sort_keys=True).encode()
            raise FsError(errno.ENODATA)
        return self._owner(ino).getxattr(ino, name)

    def statfs(self) -> dict[str, int]:
        figures = [fs.statfs() for fs in self.parts.values()]
        total = dict(figures[0])
        for key in ("files", "blocks"):
            total[key] = sum(f[key] for f in figures)
        return total
