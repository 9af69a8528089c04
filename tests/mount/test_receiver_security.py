"""Only the PBX may report: forged reports from another host, or from the right
host without the registered secret path, are refused and change nothing."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.mount.harness import receiver_url

REPORT = {"event": "NewCdr", "callid": "1718001234.88", "timestart": "2024-06-10 08:33:54",
          "recording": "20240610083402-1718001234.88-0612345678-2001-Inbound.wav"}


def post_from(address: str, url: str, body) -> int:
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(transport=transport) as client:
        return client.post(url, json=body).status_code


def test_forged_reports_are_refused(sim, mounted):
    url = receiver_url(mounted)
    # Another host (a second loopback address) with the right secret.
    assert post_from("127.0.0.2", url, REPORT) == 403
    # The right host without the secret.
    assert post_from("127.0.0.1", url.rsplit("/", 1)[0] + "/guess", REPORT) == 403
    assert post_from("127.0.0.1", url.rsplit("/", 1)[0], REPORT) == 403
    assert sorted(p.name for p in mounted.path.iterdir()) == ["by-number", "by-type"]
    assert "is not the PBX" in mounted.log() and "wrong report path" in mounted.log()
    # The PBX itself, on the registered path, is heard.
    assert post_from("127.0.0.1", url, REPORT) == 200
    assert sorted(p.name for p in mounted.path.iterdir()) == ["2024", "by-number", "by-type"]


def test_report_from_widens_who_may_report(sim, mount_factory):
    mount = mount_factory("prefetch=none", "report_from=127.0.0.1/32,127.0.0.2/32")
    assert post_from("127.0.0.2", receiver_url(mount), REPORT) == 200


@pytest.mark.parametrize("part", ["head", "body"])
def test_a_dribbling_client_is_cut_off(sim, mounted, part):
    url = httpx.URL(receiver_url(mounted))
    head = (f"POST {url.raw_path.decode()} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: 500\r\n")
    with socket.create_connection((url.host, url.port)) as sock:
        # A byte every half second: never idle, never done.
        sock.sendall(head.encode() + (b"\r\n" if part == "body" else b"X-Slow: "))
        sock.settimeout(30)
        started = time.monotonic()
        reply = b""
        for _ in range(20):
            try:
                sock.sendall(b" " if part == "body" else b"a")
            except OSError:
                break
            time.sleep(0.5)
            sock.setblocking(False)
            try:
                reply += sock.recv(1000)
            except BlockingIOError:
                pass
            sock.setblocking(True)
            if reply:
                break
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert time.monotonic() - started < 9
    # The mount and the receiver carry on.
    assert httpx.post(str(url), json=REPORT).status_code == 200


def test_a_flood_from_elsewhere_does_not_keep_the_pbx_waiting(sim, mounted):
    url = httpx.URL(receiver_url(mounted))
    # More idle connections than the receiver would ever hold at once (512), from
    # another host, each having sent half a request head and then nothing.
    idle = []
    try:
        for _ in range(600):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.settimeout(5)
            sock.connect((url.host, url.port))
            sock.sendall(b"POST /recfs/x HTTP/1.1\r\n")
            idle.append(sock)
        # The PBX is answered meanwhile, without waiting for any of them to time out.
        assert httpx.post(str(url), json=REPORT, timeout=3).status_code == 200
        # ... and after a burst of complete forged reports on top.
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"),
                          timeout=5) as forger:
            for _ in range(200):
                try:
                    assert forger.post(str(url), json=REPORT).status_code == 403
                except httpx.TransportError:
                    pass  # turned away at the door: just as good
        assert httpx.post(str(url), json=REPORT, timeout=3).status_code == 200
    finally:
        for sock in idle:
            sock.close()
    assert sorted(p.name for p in mounted.path.iterdir()) == ["2024", "by-number", "by-type"]
    log = mounted.log()
    # The flood is visible in the log, but does not flood it.
    assert "turned away" in log and "only counted" in log
    assert log.count("refused a request") + log.count("turned away") < 40, log[-3000:]
