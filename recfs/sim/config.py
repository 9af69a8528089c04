"""Everything a simulator run can be told, in one dataclass (CLI, demo and tests
build it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recfs.pbx.errors import NO_SUCH_FILE
from recfs.sim import state


@dataclass
class SimConfig:
    # 127.0.0.1:0 suits in-process use (tests, `recfs demo`); the CLI defaults to
    # 0.0.0.0:8088, the PBX's factory port.
    host: str = "127.0.0.1"
    port: int = 0
    # None → a temporary directory, removed when the simulator stops.
    data_dir: Path | None = None
    user: str = "api"
    password: str = "recfs-demo"
    tls: bool = True
    # None → data_dir/tls. A certificate already there is reused if it still fits.
    cert_dir: Path | None = None
    cert_hostnames: list[str] = field(default_factory=list)
    calls_per_minute: float = 6.0
    min_duration: int = 3
    max_duration: int = 120
    token_ttl: float = state.DEFAULT_TOKEN_TTL
    random_ttl: float = state.DEFAULT_RANDOM_TTL
    lockout_attempts: int = state.DEFAULT_LOCKOUT_ATTEMPTS
    lockout_seconds: float = state.DEFAULT_LOCKOUT_SECONDS
    report_retry_interval: float = 5.0
    report_retry_limit: int = 120
    # Minutes east of UTC for PBX-local times; None → this machine's current offset.
    utc_offset: int | None = None
    # Same form as POST /sim/faults: {"name": value | {"value": v, "times": n}}.
    faults: dict[str, Any] = field(default_factory=dict)
    # The PBX's auto-cleanup (None = off): keep only the newest N recordings
    # (checked after each call), delete those whose call is older than D days
    # (after each call and once a minute). CDRs are kept either way.
    keep_recordings: int | None = None
    keep_days: float | None = None
    # What get_random and download answer for a recording that is not there:
    # 10023 (S-Series v1) or 20014 (K2/S1000-era firmware).
    missing_errno: str = NO_SUCH_FILE
    # Seeds the choice of numbers, types and durations (None → unpredictable).
    seed: int | None = None
    # A front server (nginx in scripts/bench_content.py) sends the audio: a download
    # that came through it (request header `X-Sendfile-Type: X-Accel-Redirect`) and
    # whose random this simulator redeemed (P-Series: a resource URL GET whose URL
    # and token it accepted) is answered with `X-Accel-Redirect:
    # {accel_redirect}{name}` and no body, so that the bytes go out at the speed of
    # a C server while the handshake rules stay the simulator's. Download faults, and
    # clients that come directly, still get the simulator's own answer. None: the
    # simulator always sends the audio.
    accel_redirect: str | None = None
    # "s": the S-Series API (app.py); "p": the P-Series OpenAPI (openapi.py), where
    # user/password are the API application's Client ID and Client Secret.
    series: str = "s"
    # P-Series: seconds without a frame from the client before the PBX closes an
    # event socket; the download_resource_url's life; valid access tokens per
    # application; the most items one recording/list page holds.
    ws_idle: float = 60.0
    resource_ttl: float = 1800.0
    refresh_ttl: float = 86400.0
    token_cap: int = 8
    list_max: int = 1000
