"""`recfs archive SOURCE -o ... [--pbx NAME] [--verify] [-q]`: put every catalogued
recording into the archive, or (--verify) check every archived object against the
catalog; a progress bar, a summary, and an exit status that says whether all is
well.

Uses the same options (and so the same state_dir, catalog, cache and archive) as
the mount, and the mount's own builder (recfs/service/parts.py); it may run while
the mount is up. What it must never do beside a running mount:

* write into the cache. A recording in the cache (CACHE_DIR/complete/INO.wav) is
  read from there: the file is opened once and the descriptor kept, so an eviction
  by the mount meanwhile (an unlink) changes nothing for us; the store reads the
  same open file through /proc/self/fd/N. A file that is gone before it could be
  opened, or that is not what the catalog says, is fetched from the PBX instead.
* write the catalog other than through its one writer (recfs/catalog/writer.py);
  SQLite serialises our writer with the mount's.
* overwrite anything in the archive: an object with other bytes at a recording's
  key is a conflict, listed (and kept in the catalog, with the reason) for a person
  to look at.

Downloads from the PBX go into unnamed temporary files in STATE_DIR (O_TMPFILE:
nothing is left behind, even by kill -9), one at a time (a mount may be using the
PBX's few slots), hashed as they arrive. A recording the PBX no longer has
(errno 10023/20014) is marked lost in the catalog and listed; one already marked
lost is not asked for again. Temporary failures of the store are retried with a
back-off, then the recording counts as failed and the pass goes on; a PBX or a
store that keeps failing, or a PBX that refuses the login, stops the pass (a
refused login is never retried: the PBX locks the address out).

--verify changes nothing: it streams every object the catalog calls archived back
from the store and checks its size and SHA-256 against the catalog's, then lists
the recordings that are lost on the PBX and not in the archive either.

Exit status: 0 all is well; 1 something is missing, corrupt, lost, in conflict or
failed (or the store is not reachable); 2 the options are wrong.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import trio

from recfs.archive import ArchiveError, ArchiveStore, NotInArchive, PutOutcome, key_for, open_store
from recfs.catalog.database import Archive, Catalog, Recording
from recfs.logs import redact, setup_logging
from recfs.pbx.client import LoginDeferred, PbxClient
from recfs.pbx.pseries import PSeriesClient
from recfs.pbx.errors import PbxError
from recfs.progress import NoProgress, Progress, terminal_progress
from recfs.service.config import MountOptions, OptionError, build_options, split_options
from recfs.catalog.shared import WRITE_FAILURES
from recfs.service.mountpoint import MountError, expected_failure
from recfs.service.parts import PbxParts, open_pbx, start_writer
from recfs.content.archiver import metadata_of
from recfs.content.cache import fd_sha256

log = logging.getLogger("recfs.archive")

T = TypeVar("T")

# Pauses between tries of a store request that failed for a temporary reason.
STORE_PAUSES = (1.0, 2.0, 4.0)
# Recordings in a row that failed for the same source's sake before the pass stops.
STOP_AFTER = 5
SHOWN = 20  # names listed per kind of problem
BATCH = 256  # recordings read from the catalog at a time
MiB = 1024 * 1024


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recfs archive",
        description="Upload every catalogued recording not yet in the archive (fetching it "
                    "from the PBX when it is not in the cache), or with --verify check every "
                    "archived object against the catalog's SHA-256. Exits 1 if anything is "
                    "missing, corrupt, lost on the PBX, in conflict or failed.")
    p.add_argument("source", help="the PBX's base URL, as given to recfs mount")
    p.add_argument("--verify", action="store_true",
                   help="read every archived object back and check it (uploads nothing)")
    p.add_argument("--pbx", metavar="NAME", help="with a config of several PBXs: the [pbx.NAME] "
                   "table to archive")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="the mount's options (archive, archive_endpoint, archive_credentials, "
                        "password_file, state_dir, cache_dir, ...)")
    return p


class CommandError(Exception):
    """The command cannot go on: a one-line message (no secrets) and the exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.message = message
        self.status = status


class _Stop(Exception):
    """Inside a pass: stop feeding it (the PBX refused the login, a source keeps
    failing). The recording at hand counts as not tried."""


# -- what a pass found ----------------------------------------------------------------

@dataclass
class Listing:
    """How many recordings had one kind of outcome, and the first SHOWN of them."""

    count: int = 0
    shown: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.count += 1
        if len(self.shown) < SHOWN:
            self.shown.append(text)

    def lines(self, label: str) -> list[str]:
        out = [f"  {label}: {text}" for text in self.shown]
        if self.count > len(self.shown):
            out.append(f"  ... and {self.count - len(self.shown)} more {label}")
        return out


@dataclass
class UploadSummary:
    uploaded: int = 0
    uploaded_bytes: int = 0
    already: int = 0
    conflicts: Listing = field(default_factory=Listing)
    lost: Listing = field(default_factory=Listing)
    failed: Listing = field(default_factory=Listing)
    total: int = 0
    done: int = 0
    stopped: str | None = None

    @property
    def problems(self) -> bool:
        return bool(self.conflicts.count or self.lost.count or self.failed.count or self.stopped)

    def counts(self) -> dict[str, object]:
        return {"uploaded": self.uploaded, "there": self.already, "lost": self.lost.count,
                "failed": self.failed.count}

    def text(self) -> list[str]:
        lines = [f"archive: {self.uploaded} uploaded ({self.uploaded_bytes / MiB:.1f} MiB), "
                 f"{self.already} already there, {self.conflicts.count} conflicts, "
                 f"{self.lost.count} lost on the PBX, {self.failed.count} failed"]
        lines += self.conflicts.lines("conflict")
        lines += self.lost.lines("lost on the PBX")
        lines += self.failed.lines("failed")
        if self.stopped:
            left = max(self.total - self.done, 0)
            lines.append(f"  stopped with {left} recording(s) not tried: {self.stopped}")
        return lines


@dataclass
class VerifySummary:
    ok: int = 0
    missing: Listing = field(default_factory=Listing)
    corrupt: Listing = field(default_factory=Listing)
    unchecked: Listing = field(default_factory=Listing)
    lost: Listing = field(default_factory=Listing)
    total: int = 0
    done: int = 0
    stopped: str | None = None

    @property
    def problems(self) -> bool:
        return bool(self.missing.count or self.corrupt.count or self.unchecked.count
                    or self.lost.count or self.stopped)

    def counts(self) -> dict[str, object]:
        return {"ok": self.ok, "missing": self.missing.count, "corrupt": self.corrupt.count}

    def text(self) -> list[str]:
        first = (f"verify: {self.ok} ok, {self.missing.count} missing, {self.corrupt.count} "
                 f"corrupt; {self.lost.count} lost and not archived")
        if self.unchecked.count:
            first += f"; {self.unchecked.count} not checked (store errors)"
        lines = [first]
        lines += self.missing.lines("missing")
        lines += self.corrupt.lines("corrupt")
        lines += self.lost.lines("lost and not archived")
        lines += self.unchecked.lines("not checked")
        if self.stopped:
            left = max(self.total - self.done, 0)
            lines.append(f"  stopped with {left} object(s) not checked: {self.stopped}")
        return lines


# -- helpers --------------------------------------------------------------------------

def _text(exc: BaseException) -> str:
    """An error as one line for the terminal, with any secret starred out."""
    return redact(" ".join(str(exc).split()) or type(exc).__name__)


def _fd_path(fd: int) -> str:
    """A name for an open file that works even after it was unlinked (an evicted cache
    file, an unnamed temporary file): the store opens it as a file of its own."""
    return f"/proc/self/fd/{fd}"


class Breaker:
    """Counts failures in a row of one source (the PBX, the store); any success of
    it starts the count over."""

    def __init__(self, what: str, limit: int = STOP_AFTER):
        self.what = what
        self.limit = limit
        self.in_a_row = 0

    def ok(self) -> None:
        self.in_a_row = 0

    def failed(self, reason: str) -> None:
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise _Stop(f"{self.what} failed for {self.in_a_row} recordings in a row "
                        f"(last: {reason})")


async def store_call(call: Callable[[], Awaitable[T]], breaker: Breaker) -> T:
    """A store request, tried again after temporary failures (STORE_PAUSES); the
    last ArchiveError is raised. Any answer (or a permanent error) resets *breaker*;
    the caller counts a temporary failure that is raised (Breaker.failed)."""
    for pause in (*STORE_PAUSES, None):
        try:
            result = await call()
        except ArchiveError as exc:
            if not exc.temporary:
                breaker.ok()
                raise
            if pause is None:
                raise
            log.info("archive request failed (%s); trying again in %.0f s", _text(exc), pause)
            await trio.sleep(pause)
            continue
        breaker.ok()
        return result
    raise AssertionError("unreachable")


async def walk(fetch: Callable[[int, int], list[Recording]]) -> AsyncGenerator[Recording, None]:
    """Every recording *fetch* (a Catalog query with after_ino, limit) gives, in inode
    order, a batch at a time."""
    cursor = 0
    while True:
        batch = fetch(cursor, BATCH)
        if not batch:
            return
        cursor = batch[-1].ino
        for rec in batch:
            yield rec
        await trio.sleep(0)


async def count(fetch: Callable[[int, int], list[Recording]]) -> int:
    total = 0
    async with aclosing(walk(fetch)) as recordings:
        async for _ in recordings:
            total += 1
    return total


async def run_workers(items: AsyncGenerator[Recording, None], workers: int,
                      work: Callable[[Recording], Awaitable[None]]) -> str | None:
    """*work* on every item, *workers* at a time; stops feeding at the first _Stop
    (whose reason it returns: work in flight is finished, never cut off)."""
    stopped: list[str] = []
    send, receive = trio.open_memory_channel[Recording](0)

    async def worker(queue: trio.MemoryReceiveChannel[Recording]) -> None:
        async with queue:
            async for rec in queue:
                if stopped:
                    continue
                try:
                    await work(rec)
                except _Stop as stop:
                    if not stopped:
                        stopped.append(str(stop))

    async with trio.open_nursery() as nursery:
        async with receive:
            for _ in range(workers):
                nursery.start_soon(worker, receive.clone())
        async with send, aclosing(items):
            async for rec in items:
                if stopped:
                    break
                await send.send(rec)
    return stopped[0] if stopped else None


# -- the upload pass ------------------------------------------------------------------

@dataclass
class Content:
    """A recording's bytes, open: from the cache or a download."""

    fd: int
    size: int
    sha256: str
    owner: IO[bytes] | None = None  # the temporary file that owns fd, if any
    announced: int | None = None  # what the PBX said the size would be

    def close(self) -> None:
        if self.owner is not None:
            self.owner.close()
        else:
            os.close(self.fd)


class _Lost(Exception):
    """The PBX no longer has the recording."""


class _Failed(Exception):
    """This recording could not be archived; the message says why. *breaker*: the
    source whose failure it was, if it may be a source that is down."""

    def __init__(self, message: str, breaker: Breaker | None = None):
        super().__init__(message)
        self.breaker = breaker


class Uploader:
    def __init__(self, parts: PbxParts, store: ArchiveStore, pbx: str, cache_dir: Path,
                 temp_dir: Path, max_uploads: int, progress: Callable[[int], Progress]):
        self.catalog: Catalog = parts.catalog
        self.writer = parts.writer
        self.client: PbxClient | PSeriesClient = parts.client
        self.store = store
        self.pbx = pbx
        self.complete_dir = cache_dir / "complete"
        self.temp_dir = temp_dir
        self.max_uploads = max_uploads
        self.make_progress = progress
        self.progress: Progress = NoProgress()
        self.summary = UploadSummary()
        self.downloads = trio.CapacityLimiter(1)
        self.store_breaker = Breaker(f"the archive {store.url}")
        self.pbx_breaker = Breaker(f"the PBX {self.client.base_url}")

    async def run(self) -> UploadSummary:
        self.summary.total = await count(self.catalog.not_archived)
        self.progress = self.make_progress(self.summary.total)
        try:
            self.summary.stopped = await run_workers(walk(self.catalog.not_archived),
                                                     self.max_uploads, self.one)
        finally:
            self.progress.close()
        return self.summary

    async def one(self, listed: Recording) -> None:
        # As it is now: the mount may have archived it since the batch was read.
        rec = self.catalog.by_ino(listed.ino) or listed
        try:
            if rec.archive == Archive.ARCHIVED:
                self.summary.already += 1
            else:
                await self._archive(rec)
        except _Lost:
            self.summary.lost.add(rec.name)
        except WRITE_FAILURES as exc:  # from the writer: the catalog cannot take writes
            raise _Stop(f"cannot write the catalog: {exc}") from None
        except _Failed as exc:
            self.summary.failed.add(f"{rec.name}: {exc}")
            self._advance()
            if exc.breaker is not None:
                exc.breaker.failed(str(exc))  # _Stop once that source has failed too often
            return
        self._advance()

    def _advance(self) -> None:
        self.summary.done += 1
        if self.summary.done > self.summary.total:  # the mount added some meanwhile
            self.summary.total = self.summary.done
        self.progress.advance(1, self.summary.counts())

    async def _archive(self, rec: Recording) -> None:
        try:
            key = key_for(rec.day, rec.name, self.store.prefix, self.pbx)
        except ValueError as exc:
            raise _Failed(f"no archive key for it: {exc}") from None
        content = await self._from_cache(rec)
        if content is None:
            if rec.sha256 is not None and rec.size is not None and await self._known(rec, key):
                return  # the store holds it (or a conflict): no need to ask the PBX
            if rec.lost:
                raise _Lost()
            content = await self._from_pbx(rec)
        try:
            try:
                outcome = await store_call(
                    lambda: self.store.put(key, _fd_path(content.fd), sha256=content.sha256,
                                           size=content.size, metadata=metadata_of(rec)),
                    self.store_breaker)
            except ArchiveError as exc:
                raise _Failed(_text(exc), self.store_breaker if exc.temporary else None) from None
            if rec.sha256 is None or rec.size is None:
                await self.writer.set_content(rec.ino, content.size, content.sha256, archive=True)
            await self._record(rec, key, outcome, content.sha256, content.size)
        finally:
            content.close()

    async def _known(self, rec: Recording, key: str) -> bool:
        """For a recording whose SHA-256 the catalog knows: is its key taken already?
        (Then the catalog learns so, without a download.)"""
        assert rec.sha256 is not None and rec.size is not None
        try:
            info = await store_call(lambda: self.store.head(key), self.store_breaker)
        except ArchiveError as exc:
            raise _Failed(_text(exc), self.store_breaker if exc.temporary else None) from None
        if info is None:
            return False
        outcome = PutOutcome.ALREADY_THERE if info.same_as(rec.sha256, rec.size) else PutOutcome.CONFLICT
        await self._record(rec, key, outcome, rec.sha256, rec.size)
        return True

    async def _record(self, rec: Recording, key: str, outcome: PutOutcome, sha256: str,
                      size: int) -> None:
        if outcome is PutOutcome.CONFLICT:
            reason = f"{key} holds other bytes than {rec.name} (SHA-256 {sha256}); not overwritten"
            await self.writer.set_archived(rec.ino, Archive.CONFLICT, reason)
            self.summary.conflicts.add(f"{rec.name}: {key} holds other bytes; not overwritten")
            return
        await self.writer.set_archived(rec.ino, Archive.ARCHIVED)
        if outcome is PutOutcome.STORED:
            self.summary.uploaded += 1
            self.summary.uploaded_bytes += size
        else:
            self.summary.already += 1

    async def _from_cache(self, rec: Recording) -> Content | None:
        """The cached file, open and hashed; None if it is not there (or is not what
        the catalog says: the PBX's copy is taken instead)."""
        path = self.complete_dir / f"{rec.ino:016x}.wav"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot open the cached %s (%s): fetching it from the PBX", rec.name,
                        exc.strerror)
            return None
        try:
            size, sha256 = await trio.to_thread.run_sync(fd_sha256, fd)
        except OSError as exc:
            os.close(fd)
            log.warning("cannot read the cached %s (%s): fetching it from the PBX", rec.name,
                        exc.strerror)
            return None
        if (rec.size is not None and size != rec.size) or \
                (rec.sha256 is not None and sha256 != rec.sha256):
            os.close(fd)
            log.warning("the cached %s is not what the catalog says (%d bytes, SHA-256 %s...): "
                        "fetching it from the PBX", rec.name, size, sha256[:16])
            return None
        return Content(fd, size, sha256)

    async def _from_pbx(self, rec: Recording) -> Content:
        """Download into an unnamed temporary file, hashed as it arrives; raises _Lost,
        _Failed, or _Stop (the login refused, the PBX failing again and again)."""
        async with self.downloads:
            for attempt in (1, 2):
                try:
                    content = await self._download(rec)
                except PbxError as exc:
                    if exc.file_gone:
                        self.pbx_breaker.ok()
                        await self.writer.set_lost(rec.ino)
                        raise _Lost() from None
                    if isinstance(exc, LoginDeferred) or exc.bad_credentials or exc.locked_out:
                        raise _Stop(f"the PBX refused the login (check user= and "
                                    f"password_file=): {_text(exc)}") from None
                    if exc.errno is None and attempt == 1:
                        continue  # the connection broke: once more
                    raise _Failed(_text(exc), self.pbx_breaker) from None
                except OptionError as exc:  # the password file went away meanwhile
                    raise _Stop(str(exc)) from None
                except OSError as exc:  # the temporary file: STATE_DIR full?
                    raise _Stop(f"cannot write a temporary file in {self.temp_dir}: "
                                f"{exc.strerror or exc}") from None
                self.pbx_breaker.ok()
                problem, cut_short = self._mismatch(rec, content)
                if problem is None:
                    return content
                content.close()
                if cut_short and attempt == 1:
                    continue  # once more
                raise _Failed(problem, self.pbx_breaker if cut_short else None)
        raise AssertionError("unreachable")

    async def _download(self, rec: Recording) -> Content:
        file = tempfile.TemporaryFile(dir=self.temp_dir)
        try:
            digest = hashlib.sha256()
            size = 0
            async with self.client.download(rec.name) as body:
                announced = body.announced_size

                def take(chunk: bytes) -> None:
                    nonlocal size
                    digest.update(chunk)
                    size += len(chunk)
                    file.write(chunk)

                take(body.head)
                async for chunk in body.chunks():
                    take(chunk)
            file.flush()
        except BaseException:
            file.close()
            raise
        return Content(file.fileno(), size, digest.hexdigest(), owner=file,
                       announced=announced)

    @staticmethod
    def _mismatch(rec: Recording, content: Content) -> tuple[str | None, bool]:
        """What is wrong with a download, if anything, and whether it looks cut short
        (worth another try) rather than another file."""
        if content.announced is not None and content.size != content.announced:
            return f"the PBX sent {content.size} bytes of the {content.announced} it announced", True
        if rec.size is not None and content.size != rec.size:
            return f"the PBX sent {content.size} bytes; the catalog says {rec.size}", True
        if rec.sha256 is not None and content.sha256 != rec.sha256:
            return (f"the PBX's file (SHA-256 {content.sha256[:16]}...) is not the one the "
                    f"catalog verified (SHA-256 {rec.sha256[:16]}...)"), False
        return None, False


# -- the verify pass ------------------------------------------------------------------

class Verifier:
    def __init__(self, catalog: Catalog, store: ArchiveStore, pbx: str, workers: int,
                 progress: Callable[[int], Progress]):
        self.catalog = catalog
        self.store = store
        self.pbx = pbx
        self.workers = workers
        self.make_progress = progress
        self.progress: Progress = NoProgress()
        self.summary = VerifySummary()
        self.breaker = Breaker(f"the archive {store.url}")

    async def run(self) -> VerifySummary:
        self.summary.total = await count(self.catalog.archived)
        self.progress = self.make_progress(self.summary.total)
        try:
            self.summary.stopped = await run_workers(walk(self.catalog.archived), self.workers,
                                                     self.one)
        finally:
            self.progress.close()
        async with aclosing(walk(self.catalog.not_archived)) as recordings:
            async for rec in recordings:
                if rec.lost:
                    self.summary.lost.add(rec.name)
        return self.summary

    async def one(self, rec: Recording) -> None:
        failure = await self._check(rec)
        self.summary.done += 1
        self.progress.advance(1, self.summary.counts())
        if failure is not None:
            self.breaker.failed(failure)  # _Stop once the store has failed too often

    async def _check(self, rec: Recording) -> str | None:
        """Check one object; the store's temporary failure, if that is why it could
        not be checked."""
        try:
            key = key_for(rec.day, rec.name, self.store.prefix, self.pbx)
        except ValueError as exc:
            self.summary.unchecked.add(f"{rec.name}: no archive key for it: {exc}")
            return None
        try:
            size, sha256 = await store_call(lambda: self._read(key), self.breaker)
        except NotInArchive:
            self.summary.missing.add(key)
            return None
        except ArchiveError as exc:
            self.summary.unchecked.add(f"{key}: {_text(exc)}")
            return _text(exc) if exc.temporary else None
        expected = rec.sha256
        if expected is None:  # archived without the catalog knowing it: the object's own word
            try:
                info = await store_call(lambda: self.store.head(key), self.breaker)
            except ArchiveError as exc:
                self.summary.unchecked.add(f"{key}: {_text(exc)}")
                return _text(exc) if exc.temporary else None
            expected = info.sha256 if info is not None else None
        if rec.size is not None and size != rec.size:
            self.summary.corrupt.add(f"{key}: {size} bytes, the catalog says {rec.size}")
        elif expected is None:
            self.summary.corrupt.add(f"{key}: no SHA-256 to check it against")
        elif sha256 != expected:
            self.summary.corrupt.add(f"{key}: SHA-256 {sha256[:16]}..., the catalog says "
                                     f"{expected[:16]}...")
        else:
            self.summary.ok += 1
        return None

    async def _read(self, key: str) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        async with self.store.get(key) as body:
            async for chunk in body.chunks():
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()


# -- the command ----------------------------------------------------------------------

def select_pbx(opts: MountOptions, name: str | None) -> tuple[str, MountOptions]:
    if opts.pbxs:
        if name not in opts.pbxs:
            raise OptionError(f"the config has several PBXs: name one with --pbx "
                              f"({', '.join(sorted(opts.pbxs))})")
        return name, opts.pbxs[name]
    if name:
        raise OptionError("--pbx names a [pbx.NAME] table of the config, and it has none")
    return "", opts


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        opts = build_options(args.source, os.getcwd(), split_options(*args.options))
        name, pbx_opts = select_pbx(opts, args.pbx)
    except OptionError as exc:
        print(f"recfs: {exc}", file=sys.stderr)
        return 2
    if not pbx_opts.archive:
        print("recfs: no archive configured: give -o archive=s3://BUCKET[/PREFIX] (with "
              "archive_endpoint= and archive_credentials=) or -o archive=file:///PATH",
              file=sys.stderr)
        return 2
    if not os.path.isdir("/proc/self/fd"):
        print("recfs: recfs archive needs /proc (it hands open files to the store as "
              "/proc/self/fd/N)", file=sys.stderr)
        return 2
    setup_logging(opts.log_level if opts.log_level != "INFO" else "WARNING")
    try:
        summary = trio.run(_run, opts, name, pbx_opts, args)
    except CommandError as exc:
        print(f"recfs: {exc.message}", file=sys.stderr)
        return exc.status
    except OptionError as exc:
        print(f"recfs: {exc}", file=sys.stderr)
        return 2
    except BaseException as exc:
        failure = expected_failure(exc)  # the catalog cannot be used
        if failure is not None:
            print(f"recfs: {failure}", file=sys.stderr)
            return failure.exit_status if isinstance(failure, MountError) else 2
        if not _only(exc, KeyboardInterrupt):
            raise
        print("\nrecfs: interrupted (what was archived is in the catalog; run it again to go "
              "on)", file=sys.stderr)
        return 130
    for line in summary.text():
        print(line)
    return 1 if summary.problems else 0


def _only(exc: BaseException, kind: type[BaseException]) -> bool:
    """*exc* is a *kind*, or a group (from a nursery) of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(kind)
        return matched is not None and rest is None
    return isinstance(exc, kind)


async def _run(opts: MountOptions, name: str, pbx_opts: MountOptions,
               args: argparse.Namespace) -> UploadSummary | VerifySummary:
    assert pbx_opts.archive is not None
    try:
        store = open_store(pbx_opts.archive, endpoint=pbx_opts.archive_endpoint,
                           credentials=pbx_opts.archive_credentials,
                           profile=pbx_opts.archive_profile, region=pbx_opts.archive_region,
                           io_timeout=pbx_opts.io_timeout, max_uploads=pbx_opts.max_uploads)
    except ArchiveError as exc:
        raise CommandError(_text(exc), 2) from None
    try:
        try:
            await store.check()
        except ArchiveError as exc:
            if exc.temporary:
                raise CommandError(f"store not reachable: {_text(exc)}", 1) from None
            raise CommandError(_text(exc), 2) from None
        # The mount's own builder: the same catalog (with the PBX's name, in a mount of
        # several), the same report target registered at login.
        parts = open_pbx(pbx_opts, name, opts.listen[1], exclusive=False)
        try:
            async with _writer_running(parts):
                return await _pass(parts, store, name, pbx_opts, args)
        finally:
            parts.catalog.close()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await store.aclose()


@asynccontextmanager
async def _writer_running(parts: PbxParts) -> AsyncIterator[None]:
    """The catalog writer runs while the pass does; the PBX session is closed after."""
    async with trio.open_nursery() as nursery:
        await start_writer(nursery, parts.writer)
        try:
            yield
        finally:
            with trio.CancelScope(shield=True):
                if parts.client.logged_in:
                    with trio.move_on_after(5):
                        try:
                            await parts.client.logout()
                        except PbxError:
                            pass
                await parts.client.aclose()
            nursery.cancel_scope.cancel()


async def _pass(parts: PbxParts, store: ArchiveStore, name: str, pbx_opts: MountOptions,
                args: argparse.Namespace) -> UploadSummary | VerifySummary:
    def progress(total: int) -> Progress:
        # Shown after `delay` only: never for a pass done at once.
        return terminal_progress("verify" if args.verify else "archive", enabled=not args.quiet,
                                 total=total, unit="rec", delay=0.5)

    if args.verify:
        print(f"verifying the archive {store.url}", file=sys.stderr)
        return await Verifier(parts.catalog, store, name, max(pbx_opts.max_uploads, 2),
                              progress).run()
    print(f"archiving to {store.url}", file=sys.stderr)
    uploader = Uploader(parts, store, name, pbx_opts.resolved_cache_dir(),
                        pbx_opts.resolved_state_dir(), pbx_opts.max_uploads, progress)
    return await uploader.run()

