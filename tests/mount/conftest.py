"""Real mounts against a real simulator: `recfs sim` and `recfs mount` run as the
user would run them (subprocesses, HTTPS on loopback), and the tests use the mount
through system calls and ordinary tools. The harness itself is tests/mount/harness.py.

A mount test never skips in CI: if FUSE is missing there, it fails.
"""

from __future__ import annotations

import pytest

from tests.ci import unavailable
from tests.mount import harness
from tests.mount.harness import FUSE_OK, Mount, Sim


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/mount" in str(item.fspath):
            item.add_marker(pytest.mark.mount)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when in ("setup", "call") and report.failed:
        item.stash[_body_failed] = True
    return report


_body_failed = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _fuse_available():
    # Before any other fixture mounts anything. (A marker would not do: an xfail
    # that never runs passes quietly.)
    if not FUSE_OK:
        unavailable("no /dev/fuse or fusermount3")


@pytest.fixture(autouse=True)
def _every_mount_log_is_checked(request, tmp_path):
    """After the test, and after the other fixtures' teardown (this one is set up
    first): every Mount the test made, by mount_factory or by hand, is cleaned up
    and its log checked -- tracebacks, ERROR/CRITICAL lines the test did not allow,
    secrets. A failure here is reported beside the test's own, never instead of it."""
    harness.begin_test()
    yield
    failures = harness.end_test(tmp_path)
    if failures:
        also = (" (the test failed too: see its own report)"
                if request.node.stash.get(_body_failed, False) else "")
        pytest.fail(f"recfs log check{also}:\n" + "\n".join(failures), pytrace=False)


@pytest.fixture
def sim(tmp_path):
    simulator = Sim(tmp_path / "sim")
    yield simulator
    simulator.close()


@pytest.fixture
def mount_factory(sim, tmp_path):
    mounts: list[Mount] = []

    def make(*options: str, background: bool = False, name: str = "m",
             allowed_errors: list[str] | tuple = ()) -> Mount:
        mount = Mount(sim, tmp_path / name, *options, background=background,
                      allowed_errors=allowed_errors)
        mounts.append(mount)
        return mount

    yield make
    # Unmounted while the simulator still runs; the log check comes later
    # (_every_mount_log_is_checked).
    for mount in mounts:
        mount.cleanup()


@pytest.fixture
def mounted(mount_factory):
    """The usual mount: prefetch off, so that tests decide when the PBX is asked."""
    return mount_factory("prefetch=none")
