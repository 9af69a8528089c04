"""What a test may not do in CI: skip. FUSE, root, sox and ffprobe are all there
(scripts/setup installs them, CI runs as root), so a missing one is a failure of the
machine, and skipping would hide it. On a developer's machine it is a skip."""

from __future__ import annotations

import os

import pytest


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must have it")
    pytest.skip(reason)
