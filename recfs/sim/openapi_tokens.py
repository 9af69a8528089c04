"""The P-Series PBX's token bookkeeping, without I/O: get/refresh/del, the cap of
valid access tokens per application, the IP block after repeated failures.

Choices where ../shared/pbx-p-series.md says [unknown]: a refresh revokes the
pair it replaces; del_token revokes the access token and its refresh token; the
IP block comes after `block_attempts` (5) failed get_token calls in a row and
lasts `block_seconds`; a get_token beyond the cap answers 60002.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field

from recfs.pbx.errors import P_FAILURE, P_IP_BLOCKED, P_LIMIT, P_TOKEN_EXPIRED

_ALPHABET = string.ascii_letters + string.digits


class OpenApiFailure(Exception):
    """Answer with {"errcode": errcode, "errmsg": ...}."""

    def __init__(self, errcode: str, errmsg: str = "FAILURE"):
        super().__init__(errcode)
        self.errcode = errcode
        self.errmsg = errmsg


def new_token(length: int = 32) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


@dataclass
class _Pair:
    access: str
    refresh: str
    access_until: float
    refresh_until: float
    live: bool = True


@dataclass
class TokenStats:
    get_token: int = 0
    refresh_token: int = 0
    del_token: int = 0
    failed_get_token: int = 0
    max_valid: int = 0  # the most valid access tokens at once


@dataclass
class OpenApiTokens:
    clients: dict[str, str]  # Client ID → Client Secret
    clock: Callable[[], float]
    issue: Callable[[str], None]  # every token issued, for /sim/issued-secrets
    access_ttl: float = 1800.0
    refresh_ttl: float = 86400.0
    cap: int = 8
    block_attempts: int = 5
    block_seconds: float = 600.0
    stats: TokenStats = field(default_factory=TokenStats)
    _pairs: list[_Pair] = field(default_factory=list)
    _failures: dict[str, int] = field(default_factory=dict)
    _blocked_until: dict[str, float] = field(default_factory=dict)

    def _valid(self, now: float) -> list[_Pair]:
        self._pairs = [p for p in self._pairs if p.live and now < p.refresh_until]
        return [p for p in self._pairs if now < p.access_until]

    def valid_count(self) -> int:
        return len(self._valid(self.clock()))

    def _new_pair(self, now: float) -> _Pair:
        pair = _Pair(new_token(), new_token(), now + self.access_ttl, now + self.refresh_ttl)
        self.issue(pair.access)
        self.issue(pair.refresh)
        self._pairs.append(pair)
        self.stats.max_valid = max(self.stats.max_valid, len(self._valid(now)))
        return pair

    def blocked(self, ip: str) -> bool:
        return self.clock() < self._blocked_until.get(ip, 0.0)

    def get_token(self, client_id: str, secret: str, ip: str) -> _Pair:
        now = self.clock()
        if self.blocked(ip):
            raise OpenApiFailure(P_IP_BLOCKED, "ACCOUNT IP BLOCKED")
        expected = self.clients.get(client_id)
        if expected is None or not secrets.compare_digest(expected.encode(), secret.encode()):
            self.stats.failed_get_token += 1
            count = self._failures[ip] = self._failures.get(ip, 0) + 1
            if count >= self.block_attempts:
                self._blocked_until[ip] = now + self.block_seconds
                self._failures[ip] = 0
            raise OpenApiFailure(P_FAILURE, "FAILURE")
        self._failures[ip] = 0
        if len(self._valid(now)) >= self.cap:
            raise OpenApiFailure(P_LIMIT, "MAX LIMITATION EXCEEDED")
        self.stats.get_token += 1
        return self._new_pair(now)

    def refresh(self, refresh_token: str) -> _Pair:
        now = self.clock()
        for pair in self._pairs:
            if pair.live and pair.refresh == refresh_token and now < pair.refresh_until:
                pair.live = False
                self.stats.refresh_token += 1
                return self._new_pair(now)
        raise OpenApiFailure(P_TOKEN_EXPIRED, "TOKEN EXPIRED")

    def check(self, access_token: str | None) -> None:
        now = self.clock()
        if access_token and any(p.access == access_token for p in self._valid(now)):
            return
        raise OpenApiFailure(P_TOKEN_EXPIRED, "TOKEN EXPIRED")

    def delete(self, access_token: str | None) -> None:
        self.check(access_token)
        for pair in self._pairs:
            if pair.access == access_token:
                pair.live = False
        self.stats.del_token += 1

    def expire_all(self) -> None:
        """Behind every client's back: every token dies (a PBX restart)."""
        for pair in self._pairs:
            pair.live = False

    def valid_tokens(self) -> list[str]:
        return [p.access for p in self._valid(self.clock())]
