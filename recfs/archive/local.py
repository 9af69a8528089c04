"""The archive in a directory (local disk or an NFS share): ``archive=file:///PATH``.

Objects are plain files at PATH/KEY, so people can browse and copy them with any
tool; each has a sidecar PATH/KEY.meta.json with recfs's SHA-256, the size and the
CDR fields (readable JSON, kept beside the file it describes so a copied or moved
day keeps its metadata).

Writing, in this order, each step durable before the next:
1. the bytes go to a hidden temporary file in the key's directory, hashed while
   copied (a file that is not what the caller said is refused), then fsync;
2. ``link(temporary, final)``: the one exclusive step. It fails if the final name
   exists, so an object is never overwritten, not even by a racing writer (rename
   would replace it);
3. the sidecar, written by whoever won step 2 (temporary file, fsync, rename), then
   the directory is fsynced.
The object is the truth and the sidecar a description of it: an object whose
sidecar is missing (a crash between 2 and 3) is hashed when looked at, and the
next put of the same recording writes the sidecar again.

Blocking file work runs in trio worker threads under this store's own limiter.
Permissions: files are created 0666 less the process's umask; who may read the
archive is the directory's business.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import stat
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import trio

from recfs.archive.store import (
    CHUNK_SIZE,
    ArchiveDownload,
    ArchiveError,
    NotInArchive,
    ObjectInfo,
    PutOutcome,
    check_key,
    check_put_arguments,
    mismatch,
    read_ahead,
)

SIDECAR = ".meta.json"
COPY_CHUNK = 1024 * 1024

# Errors that go away on their own: a full disk, an NFS server away or restarting.
_TEMPORARY = {errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.ESTALE, errno.ETIMEDOUT,
              errno.EAGAIN, errno.ENOTCONN, errno.EHOSTDOWN, errno.EHOSTUNREACH,
              errno.ENETUNREACH, errno.ECONNREFUSED, errno.ECONNRESET, errno.EBUSY,
              errno.ENOMEM, errno.EINTR, errno.ENOLCK}


class LocalStore:
    """An ArchiveStore in a directory (see the module's docstring)."""

    def __init__(self, root: str | os.PathLike[str], *, max_uploads: int = 2, threads: int = 8,
                 chunk_size: int = CHUNK_SIZE):
        self.root = Path(root)
        if not self.root.is_absolute():
            raise ArchiveError(f"archive=file:///PATH needs an absolute path, not {str(root)!r}",
                               temporary=False)
        self._uploads = trio.CapacityLimiter(max_uploads)
        self._threads = trio.CapacityLimiter(threads)
        self.chunk_size = chunk_size

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    @property
    def prefix(self) -> str:
        return ""

    def _path(self, key: str) -> Path:
        check_key(key)
        if key.endswith(SIDECAR):
            raise ValueError(f"{key!r}: names ending in {SIDECAR} are the archive's sidecars")
        return self.root / key

    def _error(self, exc: OSError, doing: str) -> ArchiveError:
        return ArchiveError(f"the archive {self.url}: cannot {doing}: {exc.strerror or exc}",
                            temporary=exc.errno in _TEMPORARY)

    # -- the ArchiveStore protocol ----------------------------------------------

    async def check(self) -> None:
        await trio.to_thread.run_sync(self._check, limiter=self._threads)

    def _check(self) -> None:
        try:
            mode = os.stat(self.root).st_mode
        except FileNotFoundError:
            raise ArchiveError(f"the archive directory {self.root} does not exist: create it "
                               "(or mount the share), or fix archive=file:///PATH",
                               temporary=False) from None
        except OSError as exc:
            raise self._error(exc, f"reach {self.root}; check archive=") from None
        if not stat.S_ISDIR(mode):
            raise ArchiveError(f"archive={self.url}: {self.root} is not a directory", temporary=False)
        # The writes recfs will do, tried once: create, link, and our own probe
        # files removed again (recfs never deletes anything but its own temporaries).
        probe = self.root / f".recfs-check-{secrets.token_hex(4)}"
        linked = probe.with_name(probe.name + ".link")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
            try:
                os.link(probe, linked)
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise ArchiveError(f"the archive directory {self.root} does not support hard "
                                       "links, which recfs needs to add files without ever "
                                       "overwriting one: use another filesystem in archive=",
                                       temporary=False) from None
                raise
        except OSError as exc:
            raise self._error(exc, f"write in {self.root} (recfs needs to); check archive= and "
                                   "the directory's permissions") from None
        finally:
            for path in (linked, probe):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    async def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        return await trio.to_thread.run_sync(self._head, key, path, limiter=self._threads)

    def _head(self, key: str, path: Path) -> ObjectInfo | None:
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(exc, f"look at {key}") from None
        described = _read_sidecar(_sidecar(path))
        if described is not None and described.get("size") == size:
            metadata = described.get("metadata")
            return ObjectInfo(key, size, str(described["sha256"]),
                              dict(metadata) if isinstance(metadata, dict) else {})
        # No sidecar (or a damaged one): the file itself says what it is.
        try:
            sha256, size = _hash_file(path)
        except OSError as exc:
            raise self._error(exc, f"read {key}") from None
        return ObjectInfo(key, size, sha256, {})

    async def put(self, key: str, path: str, *, sha256: str, size: int,
                  metadata: Mapping[str, str]) -> PutOutcome:
        fields = check_put_arguments(key, sha256, size, metadata)
        final = self._path(key)
        async with self._uploads:
            return await trio.to_thread.run_sync(self._put, key, final, path, sha256, size, fields,
                                                 limiter=self._threads)

    def _put(self, key: str, final: Path, source: str, sha256: str, size: int,
             fields: dict[str, str]) -> PutOutcome:
        description = {"sha256": sha256, "size": size, "metadata": fields}
        existing = self._head(key, final)
        if existing is not None:
            return self._compare(existing, final, description)
        try:
            _make_dirs(final.parent, self.root)
            temporary = _temporary_name(final)
            try:
                got_sha256, got_size = _copy(source, temporary)
                if got_sha256 != sha256 or got_size != size:
                    raise mismatch(source, sha256, size, got_sha256, got_size)
                try:
                    os.link(temporary, final)
                except FileExistsError:
                    existing = self._head(key, final)  # a racing put won
                    assert existing is not None
                    return self._compare(existing, final, description)
            finally:
                _unlink_quietly(temporary)
            _write_sidecar(_sidecar(final), description)
            _fsync_dir(final.parent)
        except OSError as exc:
            raise self._error(exc, f"store {key}") from None
        return PutOutcome.STORED

    def _compare(self, existing: ObjectInfo, final: Path, description: dict[str, Any]) -> PutOutcome:
        if not existing.same_as(description["sha256"], description["size"]):
            return PutOutcome.CONFLICT
        if _read_sidecar(_sidecar(final)) is None:
            try:  # the crash between link and sidecar: describe the object again
                _write_sidecar(_sidecar(final), description)
                _fsync_dir(final.parent)
            except OSError as exc:
                raise self._error(exc, f"write the sidecar of {existing.key}") from None
        return PutOutcome.ALREADY_THERE

    @asynccontextmanager
    async def get(self, key: str) -> AsyncIterator[ArchiveDownload]:
        path = self._path(key)
        try:
            handle = await trio.to_thread.run_sync(_open_binary, path, limiter=self._threads)
        except FileNotFoundError:
            raise NotInArchive(f"no object {key} in the archive {self.url}") from None
        except OSError as exc:
            raise self._error(exc, f"open {key}") from None
        try:
            size = os.fstat(handle.fileno()).st_size

            def read() -> bytes:
                return handle.read(self.chunk_size)

            async def in_thread(function: Callable[[], bytes]) -> bytes:
                try:
                    return await trio.to_thread.run_sync(function, limiter=self._threads)
                except OSError as exc:
                    raise self._error(exc, f"read {key}") from None

            async with read_ahead(key, size, read, in_thread) as download:
                yield download
        finally:
            handle.close()

    async def aclose(self) -> None:
        pass


def _open_binary(path: Path) -> BinaryIO:
    return open(path, "rb")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR)


def _temporary_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("sha256"), str):
        return None
    return value


def _write_sidecar(path: Path, description: dict[str, Any]) -> None:
    temporary = _temporary_name(path)
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(description, handle, ensure_ascii=False, indent=1, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        _unlink_quietly(temporary)


def _copy(source: str, target: Path) -> tuple[str, int]:
    """Copy *source* to the new file *target*, fsynced; its SHA-256 and size."""
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as reader:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "wb") as writer:
            while chunk := reader.read(COPY_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                writer.write(chunk)
            writer.flush()
            os.fsync(writer.fileno())
    return digest.hexdigest(), size


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as reader:
        while chunk := reader.read(COPY_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _make_dirs(directory: Path, root: Path) -> None:
    """mkdir -p below *root*, each new directory's entry fsynced in its parent."""
    missing: list[Path] = []
    current = directory
    while current != root and not current.is_dir():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
