import io
import logging

import pytest

from recfs import logs


@pytest.fixture(autouse=True)
def restore_root_logger():
    root, fuse_log = logging.getLogger(), logging.getLogger("pyfuse3")
    handlers, level, filters = list(root.handlers), root.level, list(fuse_log.filters)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    fuse_log.filters[:] = filters


def capture(monkeypatch, journal: bool) -> str:
    stream = io.StringIO()
    if journal:
        monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.setattr("sys.stderr", stream)
    logs.setup_logging("INFO")
    logs.register_secret("f00dfeedf00dfeedf00dfeedf00dfeed")
    log = logging.getLogger("recfs.test")
    log.warning("GET /api/v2.0.0/recording/download?recording=a.wav&random=abcd1234&token=zzzz9999")
    log.info('login body {"password": "5f4dcc3b5aa765d61d8327deb882cf99"}')
    log.error("token f00dfeedf00dfeedf00dfeedf00dfeed expired")
    return stream.getvalue()


def test_secrets_are_redacted_everywhere(monkeypatch):
    out = capture(monkeypatch, journal=False)
    for secret in ("abcd1234", "zzzz9999", "5f4dcc3b5aa765d61d8327deb882cf99",
                   "f00dfeedf00dfeedf00dfeedf00dfeed"):
        assert secret not in out
    assert "recording=a.wav" in out and out.count("***") == 4


def test_journald_lines_carry_priorities(monkeypatch):
    out = capture(monkeypatch, journal=True)
    lines = out.splitlines()
    assert lines[0].startswith("<4>recfs.test: ") and lines[2].startswith("<3>")
    assert "abcd1234" not in out


def test_recent_problems_counts_the_last_hour(monkeypatch):
    capture(monkeypatch, journal=False)
    messages = [m for _t, m in logs.recent_problems.last_hour()]
    assert any("expired" in m for m in messages)
    assert all("f00dfeed" not in m for m in messages)
    assert logs.recent_problems.last_hour(now=10**12) == []


def test_a_log_budget_counts_what_it_does_not_log(monkeypatch, caplog):
    clock = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    budget = logs.LogBudget(logging.getLogger("test.budget"), "refused", per_minute=3)
    with caplog.at_level(logging.WARNING, logger="test.budget"):
        for i in range(50):
            budget.note("peer %d", i)
        clock[0] += 61
        budget.note("peer %d", 99)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused: peer 0", "refused: peer 1", "refused: peer 2",
                     "refused: further ones this minute are only counted",
                     "refused: 47 more in the last minute, not logged one by one",
                     "refused: peer 99"]


def test_a_reply_to_a_requester_that_is_gone_is_not_an_error(monkeypatch):
    stream = io.StringIO()
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.setattr("sys.stderr", stream)
    logs.setup_logging("INFO")
    logs.setup_logging("INFO")  # twice: still one filter
    fuse_log = logging.getLogger("pyfuse3")
    assert sum(isinstance(f, logs.RequesterGoneFilter) for f in fuse_log.filters) == 1
    # As pyfuse3's handlers log it (handlers.pxi), with strerror(-ret).
    fuse_log.error("fuse_release(): fuse_reply_* failed with %s", "No such file or directory")
    fuse_log.error("fuse_read(): fuse_reply_* failed with %s", "No such file or directory")
    fuse_log.error("fuse_read(): fuse_reply_* failed with %s", "Broken pipe")
    fuse_log.error("fuse_setattr(): clock_gettime(CLOCK_REALTIME) failed with %s",
                   "No such file or directory")
    logging.getLogger("recfs.test").error("fuse_release(): fuse_reply_* failed with %s",
                                          "No such file or directory")
    lines = stream.getvalue().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [
        "INFO pyfuse3: fuse_release(): fuse_reply_* failed with No such file or directory",
        "INFO pyfuse3: fuse_read(): fuse_reply_* failed with No such file or directory",
        "ERROR pyfuse3: fuse_read(): fuse_reply_* failed with Broken pipe",
        ("ERROR pyfuse3: fuse_setattr(): clock_gettime(CLOCK_REALTIME) failed with "
         "No such file or directory"),
        "ERROR recfs.test: fuse_release(): fuse_reply_* failed with No such file or directory",
    ]
    problems = [m for _t, m in logs.recent_problems.last_hour()]
    assert not any("pyfuse3: fuse_release()" in m for m in problems)
    assert any("Broken pipe" in m for m in problems)


def test_a_requester_gone_line_follows_the_info_level(monkeypatch):
    stream = io.StringIO()
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.setattr("sys.stderr", stream)
    logs.setup_logging("WARNING")
    fuse_log = logging.getLogger("pyfuse3")
    fuse_log.error("fuse_release(): fuse_reply_* failed with %s", "No such file or directory")
    fuse_log.error("fuse_release(): fuse_reply_* failed with %s", "Broken pipe")
    assert "No such file" not in stream.getvalue()
    assert "ERROR pyfuse3: fuse_release(): fuse_reply_* failed with Broken pipe" in stream.getvalue()
