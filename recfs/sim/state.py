"""The PBX's bookkeeping, without I/O: users, sessions, lock-out, randoms, the
recording and CDR catalog, and counters. Time comes from an injectable clock so
tests can walk through expiry without sleeping."""

from __future__ import annotations

import collections
import hashlib
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from recfs.pbx.errors import (
    BAD_CREDENTIALS,
    LOCKED_OUT,
    NO_SUCH_FILE,
    SIM_BAD_RANDOM,
)

Clock = Callable[[], float]

TOKEN_BLANK = "20005"
NO_SUCH_TOKEN = "20004"
TOKEN_TIMED_OUT = "20006"

DEFAULT_TOKEN_TTL = 1800.0
DEFAULT_RANDOM_TTL = 30.0
DEFAULT_LOCKOUT_ATTEMPTS = 5
DEFAULT_LOCKOUT_SECONDS = 600.0
DAY = 86400.0

# "Audio file does not exist": 10023 in the S-Series v1 appendix; K2/S1000-era
# firmware answers 20014 ("recording file does not exist") instead.
MISSING_ERRNOS = (NO_SUCH_FILE, "20014")

# YYYYMMDDhhmmss-{epoch}.{sequence}-...: the callid's integer part is the call's
# UTC start, its sequence orders calls that started in the same second.
_NAME_CALLID = re.compile(r"^\d{14}-(\d+)\.(\d+)-")

# Column order of the CDR CSV and the key set of a v2 NewCdr report.
CDR_FIELDS = (
    "callid",
    "timestart",
    "callfrom",
    "callto",
    "callduraction",
    "talkduraction",
    "srctrunkname",
    "desttrunkname",
    "status",
    "type",
    "pincode",
    "recording",
    "didnumber",
    "agentringtime",
    "sn",
)


class ApiFailure(Exception):
    """Answer the API call with ``{"status":"Failed","errno":errno}``."""

    def __init__(self, errno: str):
        super().__init__(errno)
        self.errno = errno


def md5_hex(password: str) -> str:
    return hashlib.md5(password.encode("utf-8")).hexdigest()


@dataclass
class ReportTarget:
    """Where reports of one session go. ``absolute`` is the urltag-1 form host:port/path."""

    host: str
    port: int
    path: str = "/"
    absolute: str | None = None

    @property
    def url(self) -> str:
        if self.absolute is not None:
            if "://" in self.absolute:
                return self.absolute
            return "http://" + self.absolute
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = self.path if self.path.startswith("/") else "/" + self.path
        return f"http://{host}:{self.port}{path}"


@dataclass
class Session:
    token: str
    user: str
    client_ip: str
    target: ReportTarget
    # "2.0.0" → v2 reports; "" → login sent no version (legacy); else v1 reports.
    report_version: str
    last_seen: float
    alive: bool = True


@dataclass
class _Random:
    subject: tuple[str, ...]
    issued: float
    ips: frozenset[str]


@dataclass
class _IpFailures:
    count: int = 0
    locked_until: float | None = None


@dataclass
class Stats:
    logins: int = 0
    failed_logins: int = 0
    logouts: int = 0
    heartbeats: int = 0
    get_random: Counter[str] = field(default_factory=Counter)
    downloads: Counter[str] = field(default_factory=Counter)
    downloads_active: int = 0
    downloads_max_concurrent: int = 0
    downloads_completed: int = 0
    cdr_get_random: int = 0
    cdr_downloads: int = 0
    reports_sent: int = 0
    reports_acked: int = 0
    calls: int = 0
    recordings_deleted: int = 0

    def download_started(self) -> None:
        self.downloads_active += 1
        self.downloads_max_concurrent = max(self.downloads_max_concurrent, self.downloads_active)

    def download_ended(self, completed: bool) -> None:
        self.downloads_active -= 1
        if completed:
            self.downloads_completed += 1

    def reset(self) -> None:
        # Bodies still streaming stay counted: they are still running.
        active = self.downloads_active
        self.__init__()  # type: ignore[misc]
        self.downloads_active = active
        self.downloads_max_concurrent = active


class SimState:
    def __init__(
        self,
        users: dict[str, str],
        *,
        clock: Clock = time.monotonic,
        token_ttl: float = DEFAULT_TOKEN_TTL,
        random_ttl: float = DEFAULT_RANDOM_TTL,
        lockout_attempts: int = DEFAULT_LOCKOUT_ATTEMPTS,
        lockout_seconds: float = DEFAULT_LOCKOUT_SECONDS,
        new_secret: Callable[[], str] = lambda: secrets.token_hex(16),
        missing_errno: str = NO_SUCH_FILE,
    ):
        # users: name → API password in clear; the wire carries its MD5.
        self._password_md5 = {user: md5_hex(pw) for user, pw in users.items()}
        self.clock = clock
        # Read at every check, so a run-time change applies to existing sessions.
        self.token_ttl = token_ttl
        self.random_ttl = random_ttl
        self.lockout_attempts = lockout_attempts
        self.lockout_seconds = lockout_seconds
        self._new_secret = new_secret
        # Every token and random handed out, so that tests can prove none of them
        # reached a client's log (GET /sim/issued-secrets).
        self.issued: collections.deque[str] = collections.deque(maxlen=100_000)
        self._sessions: dict[str, Session] = {}
        self._timed_out: set[str] = set()
        self._ip_failures: dict[str, _IpFailures] = {}
        self._randoms: dict[str, _Random] = {}
        # The answer for a recording that is not (or no longer) there.
        self.missing_errno = missing_errno
        self.recordings: dict[str, int] = {}
        # name → UTC epoch of the call's start: what the auto-cleanup ages by.
        self.recording_started: dict[str, float] = {}
        self.cdrs: list[dict[str, str]] = []
        self.stats = Stats()

    def _issue(self) -> str:
        value = self._new_secret()
        self.issued.append(value)
        return value

    # --- login and lock-out -------------------------------------------------

    def login(
        self,
        username: str,
        password_md5: str,
        client_ip: str,
        target: ReportTarget,
        report_version: str,
        *,
        forced_errno: str | None = None,
    ) -> Session:
        now = self.clock()
        record = self._ip_failures.setdefault(client_ip, _IpFailures())
        if record.locked_until is not None:
            if now < record.locked_until:
                self.stats.failed_logins += 1
                raise ApiFailure(LOCKED_OUT)
            record.count, record.locked_until = 0, None
        if forced_errno is not None:
            # A fault switch, not the user's fault: leave the lock-out counter alone.
            self.stats.failed_logins += 1
            raise ApiFailure(forced_errno)
        expected = self._password_md5.get(username)
        if expected is None or not secrets.compare_digest(expected.encode(), password_md5.encode("utf-8")):
            self.stats.failed_logins += 1
            record.count += 1
            if record.count >= self.lockout_attempts:
                record.locked_until = now + self.lockout_seconds
            raise ApiFailure(BAD_CREDENTIALS)
        record.count = 0
        token = self._issue()
        session = Session(token, username, client_ip, target, report_version, now)
        self._sessions[token] = session
        self.stats.logins += 1
        return session

    def locked_out(self, client_ip: str) -> bool:
        record = self._ip_failures.get(client_ip)
        return bool(record and record.locked_until is not None and self.clock() < record.locked_until)

    # --- sessions -------------------------------------------------------------

    def _expire_if_due(self, session: Session, now: float) -> None:
        if session.alive and now - session.last_seen >= self.token_ttl:
            session.alive = False
            del self._sessions[session.token]
            self._timed_out.add(session.token)

    def session(self, token: str | None) -> Session:
        """The live session of *token*, its TTL restarted; else ApiFailure."""
        if token is None or not token.strip():
            raise ApiFailure(TOKEN_BLANK)
        now = self.clock()
        found = self._sessions.get(token)
        if found is not None:
            self._expire_if_due(found, now)
        if token in self._timed_out:
            raise ApiFailure(TOKEN_TIMED_OUT)
        if found is None:
            raise ApiFailure(NO_SUCH_TOKEN)
        found.last_seen = now
        return found

    def is_alive(self, session: Session) -> bool:
        self._expire_if_due(session, self.clock())
        return session.alive

    def touch(self, session: Session) -> None:
        """A report reached the session's receiver: that counts as interaction."""
        if self.is_alive(session):
            session.last_seen = self.clock()

    def logout(self, session: Session) -> None:
        session.alive = False
        self._sessions.pop(session.token, None)
        self.stats.logouts += 1

    def live_sessions(self) -> list[Session]:
        now = self.clock()
        for session in list(self._sessions.values()):
            self._expire_if_due(session, now)
        return list(self._sessions.values())

    def expire_all(self) -> None:
        """As after a PBX restart: every token becomes unknown (20004)."""
        for session in self._sessions.values():
            session.alive = False
        self._sessions.clear()
        self._timed_out.clear()
        self._randoms.clear()

    # --- randoms --------------------------------------------------------------

    def issue_random(self, subject: tuple[str, ...], client_ip: str, allowed_ip: str | None = None) -> str:
        now = self.clock()
        # Forget stale ones so a long run does not accumulate them.
        for key in [k for k, r in self._randoms.items() if now - r.issued >= self.random_ttl]:
            del self._randoms[key]
        value = self._issue()
        ips = {client_ip} | ({allowed_ip} if allowed_ip else set())
        self._randoms[value] = _Random(subject, now, frozenset(ips))
        return value

    def redeem_random(self, value: str | None, subject: tuple[str, ...], client_ip: str) -> None:
        """Use a random once. Any use consumes it, even a failing one."""
        found = self._randoms.pop(value, None) if value else None
        if (
            found is None
            or self.clock() - found.issued >= self.random_ttl
            or found.subject != subject
            or client_ip not in found.ips
        ):
            raise ApiFailure(SIM_BAD_RANDOM)

    # --- catalog --------------------------------------------------------------

    def add_recording(self, name: str, size: int, started: float | None = None) -> None:
        """*started*: UTC epoch of the call's start; None → read from the name
        (the callid in it), else the recording counts as the oldest of all."""
        self.recordings[name] = size
        if started is None:
            started = call_started(name)
        self.recording_started[name] = started if started is not None else 0.0

    def remove_recording(self, name: str) -> bool:
        """Forget a recording (its file is gone). CDRs naming it stay: recordings
        and CDRs age separately on a PBX. Returns whether it was there."""
        if self.recordings.pop(name, None) is None:
            return False
        self.recording_started.pop(name, None)
        self.stats.recordings_deleted += 1
        return True

    def require_recording(self, name: str) -> int:
        size = self.recordings.get(name)
        if size is None:
            raise ApiFailure(self.missing_errno)
        return size

    def _age_key(self, name: str) -> tuple[float, int, str]:
        match = _NAME_CALLID.match(name)
        return (self.recording_started.get(name, 0.0), int(match.group(2)) if match else 0, name)

    def recordings_oldest_first(self) -> list[str]:
        return sorted(self.recordings, key=self._age_key)

    def recordings_started_before(self, epoch: float) -> list[str]:
        """Recordings whose call started before *epoch* (UTC), oldest first."""
        return [name for name in self.recordings_oldest_first() if self.recording_started[name] < epoch]

    def recordings_to_clean(
        self, *, keep_count: int | None = None, keep_days: float | None = None, now: float = 0.0
    ) -> list[str]:
        """What the PBX's auto-cleanup deletes now, oldest first: all but the
        newest *keep_count* recordings, and those whose call started more than
        *keep_days* days before *now* (UTC epoch). None switches a rule off."""
        ordered = self.recordings_oldest_first()
        doomed: set[str] = set()
        if keep_count is not None:
            doomed.update(ordered[: max(0, len(ordered) - keep_count)])
        if keep_days is not None:
            doomed.update(self.recordings_started_before(now - keep_days * DAY))
        return [name for name in ordered if name in doomed]

    def add_cdr(self, cdr: dict[str, str]) -> None:
        self.cdrs.append(cdr)

    def cdrs_between(self, start: str, end: str, who: str) -> list[dict[str, str]]:
        """CDRs with start ≤ timestart ≤ end (same fixed-width format, so text
        order is time order), for everyone ("all") or one extension/number."""
        return [
            cdr
            for cdr in self.cdrs
            if start <= cdr.get("timestart", "") <= end
            and (who == "all" or who in (cdr.get("callfrom"), cdr.get("callto")))
        ]

    def stats_json(self) -> dict[str, object]:
        s = self.stats
        return {
            "logins": s.logins,
            "failed_logins": s.failed_logins,
            "logouts": s.logouts,
            "heartbeats": s.heartbeats,
            "get_random": dict(s.get_random),
            "downloads": dict(s.downloads),
            "downloads_active": s.downloads_active,
            "downloads_max_concurrent": s.downloads_max_concurrent,
            "downloads_completed": s.downloads_completed,
            "cdr_get_random": s.cdr_get_random,
            "cdr_downloads": s.cdr_downloads,
            "reports_sent": s.reports_sent,
            "reports_acked": s.reports_acked,
            "calls": s.calls,
            "recordings_deleted": s.recordings_deleted,
            "sessions": len(self.live_sessions()),
        }


def call_started(name: str) -> float | None:
    """The UTC start of the call a simulator-style recording name belongs to
    (the integer part of the callid in it), or None for any other name."""
    match = _NAME_CALLID.match(name)
    return float(match.group(1)) if match else None
