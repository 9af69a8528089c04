"""The mount tells the truth at mount time (recfs/service/first_contact.py): a
configuration the PBX (or what answers at SOURCE) refuses ends `recfs mount` with a
non-zero exit, one line naming the option to fix, and nothing mounted; a PBX that is
only unreachable still mounts, serves the catalog and the cache, and says so on the
terminal. In the background mode (the default) and with -f."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
import types

import pytest

from recfs.service.mountpoint import EX_CONFIG
from tests.mount.harness import Mount, free_port, the_line, try_mount

MODES = ["background", "foreground"]


@pytest.mark.parametrize("mode", MODES)
def test_a_wrong_password_ends_the_command_without_a_retry(sim, tmp_path, mode):
    done = try_mount(sim, tmp_path / "w", password="wrong", foreground=mode == "foreground")
    the_line(done, mode == "foreground", "password_file=", "user=", "20003")
    stats = sim.stats()
    assert stats["failed_logins"] == 1 and stats["logins"] == 0


def test_the_same_wrong_password_again_and_again_never_trips_the_lockout(sim, tmp_path):
    # As a supervisor restarting a failed unit would: more attempts than the PBX's
    # lock-out allows (5). recfs stops asking after 3; the address is never blocked.
    for attempt in range(6):
        done = try_mount(sim, tmp_path / "w", password="wrong")
        line = the_line(done, False, "password_file=")
        if attempt >= 3:
            assert "does not try it again" in line
    assert sim.stats()["failed_logins"] == 3
    # Not locked out: the corrected password mounts at once.
    mount = Mount(sim, tmp_path / "w", "prefetch=none", background=True)
    assert mount.sim.stats()["logins"] == 1
    assert not (mount.state_dir / "login-refused").exists()


@pytest.mark.parametrize("mode", MODES)
def test_an_untrusted_certificate_names_cafile_and_fingerprint(sim, tmp_path, mode):
    done = try_mount(sim, tmp_path / "n", "cafile=", foreground=mode == "foreground")
    the_line(done, mode == "foreground", "cafile=", "fingerprint=", "not trusted")
    assert sim.stats()["logins"] == 0 and sim.stats()["failed_logins"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_wrong_fingerprint_ends_the_command(sim, tmp_path, mode):
    wrong = "sha256:" + "00" * 32
    done = try_mount(sim, tmp_path / "f", f"fingerprint={wrong}",
                     foreground=mode == "foreground")
    the_line(done, mode == "foreground", f"fingerprint={wrong}", "does not match")
    assert sim.stats()["logins"] == 0 and sim.stats()["failed_logins"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_http_against_the_https_pbx_names_the_https_url(sim, tmp_path, mode):
    plain = sim.url.replace("https://", "http://")
    done = try_mount(sim, tmp_path / "h", source=plain, foreground=mode == "foreground")
    the_line(done, mode == "foreground", plain, sim.url, "speaks HTTPS")


@pytest.fixture
def web_server(tmp_path):
    """A plain web server on loopback that is not a PBX (python -m http.server)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("<html>hello</html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("mode", MODES)
def test_a_web_server_that_is_not_a_pbx_names_the_url(sim, tmp_path, web_server, mode):
    source = f"http://{web_server}"
    done = try_mount(sim, tmp_path / "web", source=source, foreground=mode == "foreground")
    the_line(done, mode == "foreground", source, "no PBX API answers")


def test_https_to_a_plain_web_server_names_the_url(sim, tmp_path, web_server):
    source = f"https://{web_server}"
    done = try_mount(sim, tmp_path / "tls", source=source)
    the_line(done, False, source, "does not speak TLS")


def test_a_wrong_path_names_the_url_and_api_version(sim, tmp_path):
    source = f"{sim.url}/pbx"
    done = try_mount(sim, tmp_path / "p", source=source)
    the_line(done, False, source, "api_version=")
    assert sim.stats()["logins"] == 0


def test_under_systemd_the_unit_fails_with_the_reason(sim, tmp_path):
    # Type=notify: an exit before READY=1 fails the unit; the reason is in the
    # journal (stderr with <priority> prefixes) and in the unit's STATUS=.
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(0.5)
        done = try_mount(sim, tmp_path / "sd", password="wrong", foreground=True,
                         env={"NOTIFY_SOCKET": address, "JOURNAL_STREAM": "8:12345"})
        said = []
        try:
            while True:
                said.append(listener.recv(4096).decode())
        except TimeoutError:
            pass
    assert done.returncode == EX_CONFIG  # RestartPreventExitStatus=78 in contrib/recfs.service
    assert not any("READY=1" in message for message in said), said
    assert any(message.startswith("STATUS=") and "password_file=" in message for message in said)
    errors = [line for line in done.stderr.splitlines() if line.startswith("<3>")]
    assert len(errors) == 1 and "password_file=" in errors[0], done.stderr


def unreachable(sim, port: int):
    """What Mount needs of a simulator, for a PBX address where nobody answers."""
    return types.SimpleNamespace(url=f"https://127.0.0.1:{port}", user=sim.user,
                                 password=sim.password, cafile=sim.cafile,
                                 issued_secrets=sim.issued_secrets, stats=sim.stats)


@pytest.mark.parametrize("mode", MODES)
def test_an_unreachable_pbx_mounts_and_serves_the_cache(sim, tmp_path, mode):
    first = Mount(sim, tmp_path / "m", "prefetch=none", background=True)
    cached = sim.call(duration=2)
    listed = sim.call(duration=2)
    data = first.wait_file(cached).read_bytes()
    first.wait_file(listed)
    assert first.unmount() == 0

    port = free_port()  # nobody listens there: connection refused
    again = Mount(unreachable(sim, port), tmp_path / "m", "prefetch=none",
                  background=mode == "background")
    line = (f"PBX https://127.0.0.1:{port} not reachable (Connection refused); serving 1 cached "
            f"recording (2 in the catalog); retrying")
    if mode == "background":
        assert f"recfs: {line}" in again.log()  # what the terminal showed
    else:
        assert f"WARNING recfs.service.first_contact: {line}" in again.log()
    assert again.file_of(cached).read_bytes() == data
    assert again.unmount() == 0
