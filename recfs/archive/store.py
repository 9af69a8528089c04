"""What every archive store offers, and the types they share.

The archive is where recordings outlive the PBX (which deletes the oldest ones on
its own): a copy of every recording, checked by SHA-256, under a key that a person
can read (``PREFIX/[PBX/]YYYY/MM/DD/<name>``). Two rules hold for every store:

* **never overwrite, never delete.** Retention (S3 Object Lock, snapshots) is the
  store's business; recfs only adds. A different object already at a key is a
  CONFLICT the caller must look at, never something to "fix".
* **the SHA-256 is recfs's own**, kept with the object (S3 user metadata, a sidecar
  file): ETags are not content hashes (multipart), so "is this the same recording"
  is answered by the SHA-256 and the size, nothing else.

Failures are one exception type, ArchiveError, whose ``temporary`` says what the
caller should do: retry later (store down, timeouts, 5xx) or tell a person (wrong
credentials, missing bucket or directory). Messages never contain secrets.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

CHUNK_SIZE = 1024 * 1024  # what one read of a download hands on: bounded memory per reader

_DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_METADATA_KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")
RESERVED_METADATA = frozenset({"sha256"})  # set by the store from put()'s sha256


class ArchiveError(Exception):
    """The archive could not do what was asked.

    temporary=True: the store is down, slow or overloaded (connection refused,
    timeouts, HTTP 5xx, a full disk): nothing is wrong with recfs's settings, try
    again later. temporary=False: a person must act (credentials refused, bucket or
    directory missing, no permission); the message names the option to fix.
    """

    def __init__(self, message: str, *, temporary: bool):
        super().__init__(message)
        self.message = message
        self.temporary = temporary

    def __str__(self) -> str:
        return self.message


class NotInArchive(ArchiveError):
    """get(): there is no object at that key (a fact, not a failure to retry)."""

    def __init__(self, message: str):
        super().__init__(message, temporary=False)


class PutOutcome(enum.Enum):
    STORED = "stored"  # the object is now in the archive (durably, as the store defines it)
    ALREADY_THERE = "already_there"  # an object with the same SHA-256 and size was there
    CONFLICT = "conflict"  # a different object (SHA-256 or size, or unknown) is there: untouched


@dataclass(frozen=True)
class ObjectInfo:
    """What head() knows about a stored object.

    sha256 is None when the object carries none (stored by something other than
    recfs): such an object is never taken as "the same" as anything.
    """

    key: str
    size: int
    sha256: str | None
    metadata: dict[str, str] = field(default_factory=dict)  # CDR fields, decoded

    def same_as(self, sha256: str, size: int) -> bool:
        return self.sha256 == sha256 and self.size == size


class ArchiveDownload:
    """A download being streamed, shaped like recfs.pbx.client.RecordingBody so the
    content layer can serve readers from either source as bytes arrive. The bytes
    are hashed where they are read (a worker thread: hashlib lets go of the GIL), so
    `sha256()` is known, off the trio thread, once the last chunk came."""

    def __init__(self, key: str, size: int, chunks: AsyncIterator[bytes],
                 digest: Any = None):
        self.key = key
        self.size = size
        self._chunks = chunks
        self._digest = digest

    def sha256(self) -> str | None:
        """The hex SHA-256 of every byte read, once all were (None: not hashed)."""
        return None if self._digest is None else str(self._digest.hexdigest())

    @property
    def announced_size(self) -> int:
        return self.size

    # What arrived with the headers: nothing, for an object store (a PBX's download
    # answer may carry the first bytes of the body with its headers).
    head = b""

    async def chunks(self) -> AsyncIterator[bytes]:
        """The object's bytes, in chunks of at most CHUNK_SIZE; raises ArchiveError
        (temporary) if the store stalls or the body ends short."""
        async for chunk in self._chunks:
            if chunk:
                yield chunk


class ArchiveStore(Protocol):
    """An archive: S3-compatible (recfs.archive.s3) or a directory (recfs.archive.local).

    Every method may raise ArchiveError. Keys are whole object keys, made with
    key_for(day, name, store.prefix, pbx).
    """

    @property
    def url(self) -> str:
        """Where the archive is, for messages (no secrets)."""
        ...

    @property
    def prefix(self) -> str:
        """The key prefix every recfs key starts with ("" for none)."""
        ...

    async def check(self) -> None:
        """At start: the bucket or directory exists and the credentials work.
        Raises ArchiveError naming the option to fix (archive=, archive_endpoint=,
        archive_credentials=)."""
        ...

    async def put(self, key: str, path: str, *, sha256: str, size: int,
                  metadata: Mapping[str, str]) -> PutOutcome:
        """Store the file at *path* under *key* unless something is there already.

        The file is hashed while it is sent: if it does not match *sha256* and
        *size*, nothing is stored and ArchiveError(temporary=False) is raised.
        *metadata*: CDR fields (callid, caller, callee, type, timestart, ...), keys
        lower-case ASCII, values any text.
        """
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """The object at *key*, or None."""
        ...

    def get(self, key: str) -> AbstractAsyncContextManager[ArchiveDownload]:
        """``async with store.get(key) as body: async for chunk in body.chunks()``.
        Raises NotInArchive if there is no such object."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads' resources."""
        ...


def _component(value: str, what: str) -> str:
    if (not value or value in (".", "..") or "/" in value or "\\" in value or "\x00" in value
            or value != value.strip()):
        raise ValueError(f"{what} {value!r} cannot be part of an archive key")
    return value


def normalise_prefix(prefix: str) -> str:
    """"a/b/", "/a/b" and "a/b" are the same prefix; "" is none."""
    parts = [part for part in prefix.strip("/").split("/")]
    if parts == [""]:
        return ""
    return "/".join(_component(part, "prefix component") for part in parts)


def key_for(day: str, name: str, prefix: str, pbx: str = "") -> str:
    """The archive key of a recording: ``PREFIX/[PBX/]YYYY/MM/DD/<name>``.

    *day* is the recording's PBX-local day, YYYY-MM-DD (the date tree's day, so the
    archive reads like the mount); *pbx* is the PBX's name in a several-PBX mount.
    """
    match = _DAY.match(day)
    if not match:
        raise ValueError(f"day must be YYYY-MM-DD, not {day!r}")
    parts = [normalise_prefix(prefix)]
    if pbx:
        parts.append(_component(pbx, "PBX name"))
    parts.extend(match.groups())
    parts.append(_component(name, "recording name"))
    return "/".join(part for part in parts if part)


def check_key(key: str) -> str:
    """A key every store can hold: relative, no empty, "." or ".." components."""
    if not key or key.startswith("/") or key.endswith("/"):
        raise ValueError(f"not an archive key: {key!r}")
    for part in key.split("/"):
        _component(part, "key component")
    return key


def check_put_arguments(key: str, sha256: str, size: int, metadata: Mapping[str, str]) -> dict[str, str]:
    """Validate put()'s arguments; the metadata as a plain dict."""
    check_key(key)
    if not _SHA256.match(sha256):
        raise ValueError(f"sha256 must be 64 lower-case hex digits, not {sha256!r}")
    if size < 0:
        raise ValueError(f"size must not be negative: {size}")
    clean: dict[str, str] = {}
    for name, value in metadata.items():
        if not _METADATA_KEY.match(name) or name in RESERVED_METADATA:
            raise ValueError(f"metadata key {name!r}: lower-case ASCII letters, digits, - and _ "
                             f"(and not {', '.join(sorted(RESERVED_METADATA))})")
        clean[name] = str(value)
    return clean


def mismatch(path: str, sha256: str, size: int, got_sha256: str, got_size: int) -> ArchiveError:
    """The file to archive is not what the caller said it is: a bug or a damaged
    file, not something a retry fixes."""
    return ArchiveError(
        f"{path} is not the recording it should be (expected {size} bytes with SHA-256 "
        f"{sha256[:16]}..., read {got_size} bytes with SHA-256 {got_sha256[:16]}...): "
        "not archived", temporary=False)


# Chunks read ahead of the reader: the store's next read overlaps with the content
# layer's work on the last one (writing the cache file, waking readers).
READ_AHEAD = 4


@asynccontextmanager
async def read_ahead(key: str, size: int, read: Callable[[], bytes],
                     in_thread: Callable[[Callable[[], bytes]], Awaitable[bytes]],
                     ) -> AsyncIterator[ArchiveDownload]:
    """An ArchiveDownload whose chunks come from *read* (blocking; b"" at the end),
    run by *in_thread* (which turns the store's failures into ArchiveError) up to
    READ_AHEAD chunks ahead, each hashed in that thread."""
    digest = hashlib.sha256()

    def read_hashed() -> bytes:
        chunk = read()
        digest.update(chunk)
        return chunk

    send, receive = trio.open_memory_channel[bytes | ArchiveError](READ_AHEAD)

    async def reader() -> None:
        async with send:
            try:
                while chunk := await in_thread(read_hashed):
                    await send.send(chunk)
            except ArchiveError as error:  # handed to the consumer, in order
                await send.send(error)

    async def chunks() -> AsyncIterator[bytes]:
        async for item in receive:
            if isinstance(item, ArchiveError):
                raise item
            yield item

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            try:
                yield ArchiveDownload(key, size, chunks(), digest)
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The reader hands its errors over the channel: what is left is the
        # consumer's own (an ArchiveError from chunks(), a cancellation), unwrapped
        # so that callers see what they would without the read-ahead.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
