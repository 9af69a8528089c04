"""The pyfuse3 adapter: translates kernel requests into RecordingsFs calls and
errors into errnos. Nothing else lives here.

pyfuse3 only catches FUSEError: any other exception escaping a handler ends the
whole mount ("Transport endpoint is not connected"). So every handler goes through
`translated`, which turns the unexpected into EIO and a log line.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Iterator
from typing import Protocol

import pyfuse3

from recfs.vfs.core import Attributes, FsError

log = logging.getLogger("recfs.fuse")


class Filesystem(Protocol):
    """What the adapter serves: RecordingsFs (one PBX) or MultiFs (several)."""

    async def lookup(self, parent: int, name: str) -> Attributes: ...
    async def getattr(self, ino: int) -> Attributes: ...
    async def opendir(self, ino: int) -> int: ...
    def readdir(self, ino: int, after: int) -> Iterator[tuple[str, Attributes, int]]: ...
    def open(self, ino: int, flags: int) -> int: ...
    def is_cached_open(self, fh: int) -> bool: ...
    async def read(self, fh: int, offset: int, size: int) -> bytes: ...
    def release(self, fh: int) -> None: ...
    def listxattr(self, ino: int) -> list[str]: ...
    def getxattr(self, ino: int, name: str) -> bytes: ...
    def statfs(self) -> dict[str, int]: ...


def translated(handler):
    @functools.wraps(handler)
    async def wrapper(self, *args):
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except FsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            log.exception("unexpected error in %s; answering EIO", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


def _read_only(handler):
    async def refuse(self, *args):
        raise pyfuse3.FUSEError(errno.EROFS)
    refuse.__name__ = handler
    return refuse


def entry(attrs: Attributes) -> pyfuse3.EntryAttributes:
    result = pyfuse3.EntryAttributes()
    result.st_ino = attrs.ino
    result.generation = 0
    result.entry_timeout = attrs.timeout
    result.attr_timeout = attrs.timeout
    result.st_mode = attrs.mode
    result.st_nlink = attrs.nlink
    result.st_uid = attrs.uid
    result.st_gid = attrs.gid
    result.st_size = attrs.size
    result.st_blksize = 128 * 1024
    result.st_blocks = attrs.blocks
    mtime_ns = int(attrs.mtime * 1e9)
    # ctime and atime follow the call too: a remount must not look like a change
    # to backup tools that watch ctime.
    result.st_mtime_ns = result.st_ctime_ns = result.st_atime_ns = mtime_ns
    return result


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


class RecfsOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: Filesystem, *, direct_io: bool = True):
        super().__init__()
        self.fs = fs
        self.direct_io = direct_io

    @translated
    async def lookup(self, parent_inode, name, ctx=None):
        return entry(await self.fs.lookup(parent_inode, _name(name)))

    @translated
    async def getattr(self, inode, ctx=None):
        return entry(await self.fs.getattr(inode))

    @translated
    async def opendir(self, inode, ctx):
        return await self.fs.opendir(inode)

    @translated
    async def readdir(self, fh, start_id, token):
        for name, attrs, cursor in self.fs.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, os.fsencode(name), entry(attrs), cursor):
                break

    @translated
    async def releasedir(self, fh):
        pass

    @translated
    async def open(self, inode, flags, ctx):
        fh = self.fs.open(inode, flags)
        if self.direct_io:
            # Every read comes here, as large as the program asked (up to 1 MiB),
            # and goes straight into its buffer. Through the page cache instead, a
            # recording read once sits in memory twice (the cache file's pages and
            # the mount's), and copying a tree out pays for that second copy (README,
            # Benchmarks). The price: mmap(MAP_SHARED) fails (ENODEV) unless
            # direct_io=no.
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        return pyfuse3.FileInfo(fh=fh, keep_cache=self.fs.is_cached_open(fh))

    @translated
    async def read(self, fh, off, size):
        return await self.fs.read(fh, off, size)

    @translated
    async def release(self, fh):
        self.fs.release(fh)

    @translated
    async def flush(self, fh):
        pass

    @translated
    async def statfs(self, ctx):
        figures = self.fs.statfs()
        result = pyfuse3.StatvfsData()
        result.f_bsize = figures["bsize"]
        result.f_frsize = figures["frsize"]
        result.f_blocks = figures["blocks"]
        result.f_bfree = figures["bfree"]
        result.f_bavail = figures["bavail"]
        result.f_files = figures["files"]
        result.f_ffree = figures["ffree"]
        result.f_favail = figures["ffree"]
        result.f_namemax = figures["namemax"]
        return result

    @translated
    async def getxattr(self, inode, name, ctx):
        return self.fs.getxattr(inode, _name(name))

    @translated
    async def listxattr(self, inode, ctx):
        return [os.fsencode(n) for n in self.fs.listxattr(inode)]

    @translated
    async def access(self, inode, mode, ctx):
        if mode & os.W_OK:
            raise FsError(errno.EROFS)
        return True

    @translated
    async def forget(self, inode_list):
        pass

    setattr = _read_only("setattr")
    mknod = _read_only("mknod")
    mkdir = _read_only("mkdir")
    unlink = _read_only("unlink")
    rmdir = _read_only("rmdir")
    symlink = _read_only("symlink")
    rename = _read_only("rename")
    link = _read_only("link")
    write = _read_only("write")
    create = _read_only("create")
    setxattr = _read_only("setxattr")
    removexattr = _read_only("removexattr")
