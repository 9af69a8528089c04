"""The first login's verdict (recfs/service/first_contact.py): a configuration error
ends the command, an outage mounts anyway; and the mount point's checks
(recfs/service/mountpoint.py). No network, no FUSE: failures are built as the client
raises them (a PbxError raised `from None` inside the `except` of an httpx error,
which came from httpcore, which came from ssl or the socket)."""

from __future__ import annotations

import logging
import math
import os
import socket
import ssl

import httpcore
import httpx
import pytest
import trio

from recfs.pbx.client import LoginGuard, PbxClient, ReportTarget
from recfs.pbx.errors import PbxError
from recfs.pbx.tls import PinMismatch
from recfs.service import first_contact as fc
from recfs.service.config import build_options
from recfs.service.mountpoint import MountError, examine, mounted_at

SOURCE = "https://pbx.example:8088"


def options(tmp_path, source=SOURCE, **raw):
    password = tmp_path / "password"
    password.write_text("secret\n")
    password.chmod(0o600)
    raw.setdefault("password_file", str(password))
    raw.setdefault("state_dir", str(tmp_path / "state"))
    return build_options(source, str(tmp_path / "mnt"), raw, {})


CORE = {httpx.ConnectError: httpcore.ConnectError, httpx.ConnectTimeout: httpcore.ConnectTimeout,
        httpx.RemoteProtocolError: httpcore.RemoteProtocolError, httpx.ReadError: httpcore.ReadError}


def as_the_client_raises(inner: BaseException, outer=httpx.ConnectError) -> PbxError:
    """inner -> httpcore error -> httpx error -> PbxError (from None), as raised."""
    core = CORE[outer]
    try:
        try:
            try:
                raise inner
            except BaseException as exc:
                raise core(str(exc)) from exc
        except tuple(CORE.values()) as exc:
            raise outer(str(exc)) from exc
    except httpx.HTTPError as exc:
        try:
            raise PbxError("login", None, f"{type(exc).__name__}: {exc}") from None
        except PbxError as error:
            return error
    raise AssertionError("unreachable")


def verify_failed(message="self-signed certificate") -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    error.verify_message = message
    error.reason = "CERTIFICATE_VERIFY_FAILED"
    return error


def ssl_error(cls, reason: str) -> ssl.SSLError:
    error = cls(1, f"[SSL: {reason}] ...")
    error.reason = reason
    return error


# -- configuration errors ------------------------------------------------------------

def test_refused_credentials_name_the_password_file_and_user(tmp_path):
    opts = options(tmp_path)
    verdict = fc.classify(PbxError("login", "20003"), opts)
    assert verdict.configuration and verdict.credentials
    assert f"password_file={opts.password_file}" in verdict.message
    assert "user=" in verdict.message and "20003" in verdict.message


def test_refused_credentials_from_the_environment_name_it(tmp_path):
    opts = build_options(SOURCE, str(tmp_path), {}, {"RECFS_PASSWORD": "x"})
    verdict = fc.classify(PbxError("login", "20003"), opts)
    assert "RECFS_PASSWORD" in verdict.message and "password_file" not in verdict.message


def test_an_untrusted_certificate_names_cafile_and_fingerprint(tmp_path):
    verdict = fc.classify(as_the_client_raises(verify_failed()), options(tmp_path))
    assert verdict.configuration
    assert "cafile=" in verdict.message and "fingerprint=" in verdict.message
    assert "self-signed certificate" in verdict.message


def test_a_certificate_the_cafile_does_not_verify_names_that_cafile(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    verdict = fc.classify(as_the_client_raises(verify_failed("unable to get local issuer")),
                          options(tmp_path, cafile=str(ca)))
    assert verdict.configuration and f"cafile={ca}" in verdict.message


def test_a_pin_mismatch_names_fingerprint(tmp_path):
    pin = "sha256:" + "ab" * 32
    error = as_the_client_raises(PinMismatch("the PBX's certificate does not match"))
    verdict = fc.classify(error, options(tmp_path, fingerprint=pin))
    assert verdict.configuration and f"fingerprint={pin}" in verdict.message


def test_tls_to_a_plain_http_server_names_the_url(tmp_path):
    error = as_the_client_raises(ssl_error(ssl.SSLError, "WRONG_VERSION_NUMBER"))
    verdict = fc.classify(error, options(tmp_path))
    assert verdict.configuration and SOURCE in verdict.message and "TLS" in verdict.message


def test_plain_http_to_a_tls_server_names_the_https_url(tmp_path):
    opts = options(tmp_path, source="http://pbx.example:8088")
    error = as_the_client_raises(OSError("Server disconnected without sending a response."),
                                 httpx.RemoteProtocolError)
    first = fc.classify(error, opts)
    assert first.probe_tls  # asks whether the server speaks TLS
    verdict = fc.classify(error, opts, speaks_tls=True)
    assert verdict.configuration and "https://pbx.example:8088" in verdict.message
    # A plain-HTTP server that hung up is only unreachable.
    assert not fc.classify(error, opts, speaks_tls=False).configuration


def test_a_wrong_path_or_api_version_names_both(tmp_path):
    opts = options(tmp_path, source=SOURCE + "/pbx")
    verdict = fc.classify(PbxError("login", "10003"), opts)
    assert verdict.configuration
    assert "/pbx/api/v2.0.0/login" in verdict.message and "api_version=" in verdict.message


def _client_against(handler) -> PbxClient:
    return PbxClient(SOURCE, "api", lambda: "secret", target=ReportTarget(8260, "/r"),
                     transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("response", [
    httpx.Response(501, html="<html>Unsupported method ('POST')</html>"),  # python -m http.server
    httpx.Response(404, html="<html>Not Found</html>"),
    httpx.Response(200, html="<html>a router's login page</html>"),
    httpx.Response(200, json={"errcode": 10001, "errmsg": "FAILURE"}),  # a P-Series OpenAPI
    httpx.Response(200, json=["not", "an", "object"]),
], ids=["501", "404", "html", "p-series", "json-array"])
async def test_a_web_server_that_is_not_the_pbx_api_names_the_url(tmp_path, response):
    # Through the real client: its wording is what the classifier reads.
    client = _client_against(lambda request: response)
    with pytest.raises(PbxError) as raised:
        await client.login()
    verdict = fc.classify(raised.value, options(tmp_path))
    assert verdict.configuration, verdict
    assert SOURCE in verdict.message and "no PBX API answers" in verdict.message


# -- outages -------------------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_5xx_is_an_outage(tmp_path, status):
    client = _client_against(lambda request: httpx.Response(status, html="<html>busy</html>"))
    with pytest.raises(PbxError) as raised:
        await client.login()
    verdict = fc.classify(raised.value, options(tmp_path))
    assert not verdict.configuration and "not reachable" in verdict.message


def test_connection_refused_is_an_outage_in_the_systems_words(tmp_path):
    refused = ConnectionRefusedError(111, "Error connecting to ('10.0.0.1', 8088): Connection refused")
    group = OSError("all attempts to connect to pbx.example:8088 failed")
    group.__cause__ = ExceptionGroup("attempts", [refused])
    verdict = fc.classify(as_the_client_raises(group), options(tmp_path))
    assert not verdict.configuration
    assert verdict.message == f"PBX {SOURCE} not reachable (Connection refused)"


def test_dns_failure_is_an_outage(tmp_path):
    error = as_the_client_raises(socket.gaierror(-2, "Name or service not known"))
    verdict = fc.classify(error, options(tmp_path))
    assert not verdict.configuration and "cannot resolve pbx.example" in verdict.message


def test_timeouts_and_broken_handshakes_are_outages(tmp_path):
    opts = options(tmp_path)
    for error in (as_the_client_raises(TimeoutError(), httpx.ConnectTimeout),
                  as_the_client_raises(ssl_error(ssl.SSLEOFError, "UNEXPECTED_EOF_WHILE_READING")),
                  as_the_client_raises(ConnectionResetError(104, "reset"), httpx.ReadError)):
        assert not fc.classify(error, opts).configuration, error


def test_a_lock_out_and_unknown_errnos_are_outages(tmp_path):
    opts = options(tmp_path)
    locked = fc.classify(PbxError("login", "20002"), opts)
    assert not locked.configuration and "20002" in locked.message
    unknown = fc.classify(PbxError("login", "29999"), opts)
    assert not unknown.configuration and "29999" in unknown.message


# -- first_contact: one login, its verdict, refusals remembered ------------------------

class FakeClient:
    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.logins = 0

    async def login(self):
        self.logins += 1
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome == "hang":
            await trio.sleep(math.inf)
        if isinstance(outcome, BaseException):
            raise outcome


async def contact(client, opts, name=""):
    await fc.first_contact(client, opts, name, lambda: (3, 5))


async def test_success_returns_and_forgets_old_refusals(tmp_path):
    opts = options(tmp_path)
    memory = fc.RefusalMemory(opts.resolved_state_dir() / fc.REFUSED_FILE)
    memory.note(opts.user, "secret")
    await contact(FakeClient(None), opts)
    assert not memory.path.exists()


async def test_an_outage_is_a_warning_with_what_is_served(tmp_path, caplog):
    refused = as_the_client_raises(ConnectionRefusedError(111, "Connection refused"))
    with caplog.at_level(logging.WARNING):
        await contact(FakeClient(refused), options(tmp_path))
    [record] = [r for r in caplog.records if r.name == "recfs.service.first_contact"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (f"PBX {SOURCE} not reachable (Connection refused); serving 3 "
                                   f"cached recordings (5 in the catalog); retrying")


async def test_no_answer_within_io_timeout_is_an_outage(tmp_path, caplog, autojump_clock):
    with caplog.at_level(logging.WARNING):
        await contact(FakeClient("hang"), options(tmp_path, io_timeout="7"))
    assert "no answer within io_timeout=7 s" in caplog.text


async def test_refused_credentials_end_and_are_remembered_until_they_change(tmp_path):
    opts = options(tmp_path)
    client = FakeClient(*[PbxError("login", "20003")] * LoginGuard.MAX_BAD_CREDENTIALS)
    for _ in range(LoginGuard.MAX_BAD_CREDENTIALS):
        with pytest.raises(MountError, match="password_file="):
            await contact(client, opts)
    assert client.logins == LoginGuard.MAX_BAD_CREDENTIALS
    # Started again (a supervisor, a loop): the PBX is not asked again.
    with pytest.raises(MountError, match=r"3 times.*lock-out.*password_file="):
        await contact(client, opts)
    assert client.logins == LoginGuard.MAX_BAD_CREDENTIALS
    stored = (opts.resolved_state_dir() / fc.REFUSED_FILE).read_text()
    assert "secret" not in stored
    assert os.stat(opts.resolved_state_dir() / fc.REFUSED_FILE).st_mode & 0o077 == 0
    # A corrected password file is tried at once.
    (tmp_path / "password").write_text("corrected\n")
    await contact(client, opts)
    assert client.logins == LoginGuard.MAX_BAD_CREDENTIALS + 1


async def test_several_pbxs_each_named_in_one_error(tmp_path):
    class Service:
        def __init__(self, name, outcome):
            self.name, self.client = name, FakeClient(outcome)
            self.opts = options(tmp_path / name)

        async def first_contact(self):
            await contact(self.client, self.opts, self.name)

        async def log_out(self):
            self.logged_out = True

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    services = [Service("a", PbxError("login", "20003")), Service("b", None),
                Service("c", as_the_client_raises(verify_failed()))]
    with pytest.raises(MountError) as raised:
        await fc.contact_all(services)
    lines = str(raised.value).splitlines()
    assert sorted(line.split(":")[0] for line in lines) == ["pbx.a", "pbx.c"]
    # The one that logged in does not stay logged in to a mount that never came up.
    assert [getattr(s, "logged_out", False) for s in services] == [False, True, False]


# -- the mount point ---------------------------------------------------------------------

def test_a_missing_mount_point_does_not_exist(tmp_path):
    finding = examine(str(tmp_path / "nope"), nonempty=False)
    assert finding.error == f"mount point {tmp_path / 'nope'} does not exist"


def test_a_file_is_not_a_directory(tmp_path):
    (tmp_path / "f").write_text("")
    assert "is not a directory" in examine(str(tmp_path / "f"), nonempty=False).error


def test_files_in_the_mount_point_need_nonempty(tmp_path):
    (tmp_path / "keep.txt").write_text("")
    finding = examine(str(tmp_path), nonempty=False)
    assert "not empty" in finding.error and "hide" in finding.error
    assert "-o nonempty" in finding.error and "keep.txt" in finding.error
    assert examine(str(tmp_path), nonempty=True).ok


def test_an_empty_directory_is_fine(tmp_path):
    assert examine(str(tmp_path), nonempty=False).ok


def _mountinfo(tmp_path, path, fstype, source):
    escaped = str(path).replace(" ", "\\040")
    info = tmp_path / "mountinfo"
    info.write_text(f"22 1 0:21 / /proc rw - proc proc rw\n"
                    f"40 22 0:40 / {escaped} ro,nosuid - {fstype} {source} ro\n")
    return str(info)


def test_mountinfo_is_read_with_its_escapes(tmp_path):
    target = tmp_path / "with space"
    info = _mountinfo(tmp_path, target, "fuse.recfs", "recfs")
    entry = mounted_at(str(target), info)
    assert entry is not None and entry.recfs and entry.fstype == "fuse.recfs"
    assert mounted_at(str(tmp_path), info) is None


def test_a_live_mount_is_never_stacked_on(tmp_path):
    target = tmp_path / "mnt"
    target.mkdir()
    # A statfs that answers: live (here it is the plain directory that answers).
    info = _mountinfo(tmp_path, target, "fuse.recfs", "recfs")
    finding = examine(str(target), nonempty=True, mountinfo=info)
    assert "already in use" in finding.error and "recfs mount is running" in finding.error


def test_another_filesystem_there_needs_nonempty(tmp_path):
    target = tmp_path / "mnt"
    target.mkdir()
    info = _mountinfo(tmp_path, target, "tmpfs", "tmpfs")
    assert "nonempty" in examine(str(target), nonempty=False, mountinfo=info).error
    assert examine(str(target), nonempty=True, mountinfo=info).ok


def test_nonempty_is_a_mount_wide_flag(tmp_path):
    assert build_options(SOURCE, "/mnt", {"nonempty": True}, {"RECFS_PASSWORD": "x"}).nonempty
    assert not build_options(SOURCE, "/mnt", {}, {"RECFS_PASSWORD": "x"}).nonempty
    config = tmp_path / "c.toml"
    config.write_text('[pbx.a]\nsource = "https://a:8088"\nnonempty = true\n')
    from recfs.service.config import OptionError
    with pytest.raises(OptionError, match="nonempty"):
        build_options("recfs", "/mnt", {"config": str(config)}, {"RECFS_PASSWORD": "x"})
