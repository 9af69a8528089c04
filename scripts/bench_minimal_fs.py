#!/usr/bin/env python3
"""The ceiling for pyfuse3: a minimal read-only filesystem serving, from memory, a
tree of the same shape as a recfs catalog (YYYY/MM/DD directories, the same number
of files per day, names of the same length). scripts/bench_scale.py mounts it next
to recfs and runs the same `find` on both.

    .venv/bin/python scripts/bench_minimal_fs.py CATALOG MOUNTPOINT
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import sys

import pyfuse3
import trio

FILE_BASE = 1 << 40


class MinimalFs(pyfuse3.Operations):
    def __init__(self, days: list[tuple[str, int]]):
        super().__init__()
        self.dirs: dict[int, list[tuple[bytes, int]]] = {pyfuse3.ROOT_INODE: []}
        self.by_name: dict[tuple[int, bytes], int] = {}
        self.files: dict[int, int] = {}  # day dir inode -> number of files
        self.day_of: list[int] = []
        next_ino = 2
        paths: dict[str, int] = {"": pyfuse3.ROOT_INODE}
        for day, count in days:
            parent = ""
            for part in day.split("-"):
                path = f"{parent}/{part}" if parent else part
                if path not in paths:
                    paths[path] = next_ino
                    self.dirs[next_ino] = []
                    self.dirs[paths[parent]].append((part.encode(), next_ino))
                    self.by_name[(paths[parent], part.encode())] = next_ino
                    next_ino += 1
                parent = path
            self.files[paths[parent]] = count
            self.day_index = None
        self.day_dirs = sorted(self.files)
        self.slot = {ino: k for k, ino in enumerate(self.day_dirs)}

    def _file_ino(self, dir_ino: int, i: int) -> int:
        return FILE_BASE + (self.slot[dir_ino] << 20) + i

    @staticmethod
    def _name(i: int) -> bytes:
        return b"20240610083402-1718001234.%09d-0612345678-2001-Inbound.wav" % i

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        if ino >= FILE_BASE:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o444, 1, 1000000
        else:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFDIR | 0o555, 2, 0
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = 1718001234 * 10**9
        a.entry_timeout = a.attr_timeout = 3600
        return a

    async def getattr(self, inode, ctx=None):
        return self._attr(inode)

    async def lookup(self, parent, name, ctx=None):
        child = self.by_name.get((parent, name))
        if child is not None:
            return self._attr(child)
        if parent in self.files and name.startswith(b"20240610083402-1718001234."):
            i = int(name[26:35])
            if i < self.files[parent]:
                return self._attr(self._file_ino(parent, i))
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        entries = self.dirs.get(fh, [])
        k = start_id
        while k < len(entries):
            name, ino = entries[k]
            if not pyfuse3.readdir_reply(token, name, self._attr(ino), k + 1):
                return
            k += 1
        count = self.files.get(fh, 0)
        i = k - len(entries)
        while i < count:
            if not pyfuse3.readdir_reply(token, self._name(i), self._attr(self._file_ino(fh, i)),
                                         len(entries) + i + 1):
                return
            i += 1

    async def releasedir(self, fh):
        pass


def main() -> int:
    catalog, mountpoint = sys.argv[1], sys.argv[2]
    db = sqlite3.connect(catalog)
    days = db.execute("SELECT day, count FROM days ORDER BY day").fetchall()
    db.close()
    pyfuse3.init(MinimalFs(days), mountpoint, {"fsname=minimalfs", "ro", "default_permissions"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
