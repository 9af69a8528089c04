"""The simulator's disk: ``recordings/*.wav`` and ``cdrs.jsonl`` under data_dir, so
a restarted simulator still has its history (as a PBX does). The files on disk are
the truth: a deleted recording is an unlinked file, so a restart does not bring it
back; the CDR file is never rewritten (deleted recordings keep their CDRs)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from recfs.pbx.names import BadName, check_recording_name
from recfs.sim import wav

log = logging.getLogger(__name__)


class Store:
    def __init__(self, data_dir: str | os.PathLike[str]):
        self.data_dir = Path(data_dir)
        self.recordings_dir = self.data_dir / "recordings"
        self.cdr_file = self.data_dir / "cdrs.jsonl"
        self.recordings_dir.mkdir(parents=True, exist_ok=True)
        self._sha_cache: dict[str, tuple[int, int, str]] = {}

    def path_of(self, name: str) -> Path:
        # Names were checked when created; re-check because this joins a path.
        return self.recordings_dir / check_recording_name(name)

    def load_recordings(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for entry in os.scandir(self.recordings_dir):
            if entry.is_file() and entry.name.endswith(".wav"):
                try:
                    found[check_recording_name(entry.name)] = entry.stat().st_size
                except BadName:
                    continue
        return found

    def load_cdrs(self) -> list[dict[str, str]]:
        cdrs: list[dict[str, str]] = []
        try:
            with open(self.cdr_file, encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    try:
                        cdr = json.loads(line)
                    except ValueError:
                        # A crash mid-append leaves half a line; the rest is good.
                        log.warning("%s:%d: unreadable CDR line skipped", self.cdr_file, number)
                        continue
                    if isinstance(cdr, dict):
                        cdrs.append({str(k): str(v) for k, v in cdr.items()})
        except FileNotFoundError:
            pass
        return cdrs

    def append_cdr(self, cdr: dict[str, str]) -> None:
        with open(self.cdr_file, "a", encoding="utf-8") as out:
            out.write(json.dumps(cdr, ensure_ascii=False) + "\n")

    def write_recording(self, name: str, seed: str, seconds: int) -> int:
        """Blocking (run it in a thread for long calls). Appears atomically."""
        final = self.path_of(name)
        tmp = self.recordings_dir / f".{name}.part"
        size = wav.write_wav(str(tmp), seed, seconds)
        os.replace(tmp, final)
        return size

    def recording_mtime(self, name: str) -> float | None:
        try:
            return self.path_of(name).stat().st_mtime
        except (BadName, OSError):
            return None

    def delete_recordings(self, names: list[str]) -> tuple[list[str], list[str]]:
        """Blocking: unlink these recordings, durably (the directory is fsynced).

        Returns (deleted, failed). A file already gone counts as deleted: the
        goal is that it is not there. Failures are logged and left in place."""
        deleted: list[str] = []
        failed: list[str] = []
        for name in names:
            try:
                self.path_of(name).unlink(missing_ok=True)
            except (BadName, OSError) as error:
                log.error("recording %s could not be deleted: %s", name, error)
                failed.append(name)
                continue
            self._sha_cache.pop(name, None)
            deleted.append(name)
        if deleted:
            self._fsync_dir()
        return deleted, failed

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.recordings_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            log.warning("%s: cannot open to fsync: %s", self.recordings_dir, error)
            return
        try:
            os.fsync(fd)
        except OSError as error:
            log.warning("%s: fsync failed: %s", self.recordings_dir, error)
        finally:
            os.close(fd)

    def listing(self, names: list[str]) -> list[dict[str, object]]:
        """Blocking: name, size, sha256 of each recording (hashes cached by size+mtime)."""
        result = []
        for name in sorted(names):
            path = self.path_of(name)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            cached = self._sha_cache.get(name)
            if cached and cached[:2] == (st.st_size, st.st_mtime_ns):
                digest = cached[2]
            else:
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                digest = h.hexdigest()
                self._sha_cache[name] = (st.st_size, st.st_mtime_ns, digest)
            result.append({"name": name, "size": st.st_size, "sha256": digest})
        return result
