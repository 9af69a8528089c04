"""Fixtures shared by the unit tests."""

from __future__ import annotations

import time

import pytest

# Host time zones far from the PBX's, as POSIX TZ strings (no zone data needed):
# New York (UTC-4 in June), India (+05:30), Kiritimati (+14).
HOST_ZONES = ["EST5EDT,M3.2.0,M11.1.0", "IST-5:30", "<+14>-14"]


@pytest.fixture(params=HOST_ZONES)
def host_tz(request, monkeypatch):
    """The test runs with the host's local time zone set to each of HOST_ZONES."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    assert time.localtime(1718001234).tm_gmtoff != 0  # the zone really is in force
    yield request.param
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
async def world(tmp_path, nursery):
    """A RecordingsFs over a real catalog and cache, its PBX played by respx
    (tests/unit/vfs_world.py)."""
    from tests.unit.vfs_world import make_world
    return await make_world(tmp_path, nursery)
