"""Durable ingestion: a report answered 200 is committed; kill -9 in the middle of
a burst of reports loses none of the acknowledged ones."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time

from tests.mount.harness import receiver_url, wait_for


def report(i: int) -> tuple[str, str, bytes]:
    epoch = 1718001234 + i * 97  # spread over a few days
    start = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))
    name = f"{time.strftime('%Y%m%d%H%M%S', time.gmtime(epoch + 5))}-{epoch}.{i}-0612345678-2001-Inbound.wav"
    body = {"event": "NewCdr", "callid": f"{epoch}.{i}", "timestart": start, "callfrom": "0612345678",
            "callto": "2001", "type": "Inbound", "status": "ANSWERED", "recording": name}
    return start[:10], name, json.dumps(body).encode()


def post(host: str, port: int, path: str, body: bytes) -> int | None:
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            reply = s.makefile("rb").readline()
            return int(reply.split()[1]) if reply else None
    except (OSError, ValueError, IndexError):
        return None


def test_kill_9_during_a_burst_loses_no_acknowledged_report(sim, mount_factory):
    mount = mount_factory("prefetch=none", "backfill_interval=3600")
    url = receiver_url(mount)
    hostport, _, path = url.removeprefix("http://").partition("/")
    host, _, port = hostport.rpartition(":")
    reports = [report(i) for i in range(4000)]
    acked: list[tuple[str, str]] = []
    lock = threading.Lock()
    queue = iter(reports)

    def client():
        for day, name, body in queue:
            if post(host, int(port), "/" + path, body) == 200:
                with lock:
                    acked.append((day, name))

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 300, 60, what="some acknowledged reports")
    os.kill(mount.proc.pid, signal.SIGKILL)
    for t in threads:
        t.join(60)
    mount.proc.wait(10)
    subprocess.run(["fusermount3", "-uz", str(mount.path)], timeout=30)
    assert 300 <= len(acked) < len(reports), "the kill did not land in the middle of the burst"

    again = mount_factory("prefetch=none", "backfill_interval=3600")  # same state directory
    listed: set[str] = set()
    for day in sorted({d for d, _ in acked}):
        listed |= set(os.listdir(again.p(*day.split("-"))))
    missing = [name for _, name in acked if name not in listed]
    assert missing == [], f"{len(missing)} acknowledged recordings lost, e.g. {missing[:3]}"
    assert again.unmount() == 0
