"""Every path that writes the catalog at once, on a real mount: a large back-fill
(thousands of calls the PBX never reported), reports pushed by several senders at
the same time, and downloads recording sizes. Every report is answered 200 on its
first try, and every recording is in the tree."""

from __future__ import annotations

import json
import os
import threading
import time

import httpx

from tests.mount.harness import Mount, Sim, receiver_url, wait_for

HISTORY = 4000
REPORTS = 600
SENDERS = 8


def cdr(i: int, now: int, prefix: str) -> dict[str, str]:
    epoch = now - 90 * 60 + i  # the last 90 minutes, PBX time = UTC (--utc-offset 0)
    start = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(epoch + 3))
    number = f"06{prefix}{i:06d}"
    return {"callid": f"{epoch}.{i}", "timestart": start, "callfrom": number, "callto": "2001",
            "callduraction": "30", "talkduraction": "25", "srctrunkname": "", "desttrunkname": "",
            "status": "ANSWERED", "type": "Inbound", "pincode": "", "didnumber": "", "sn": "",
            "recording": f"{stamp}-{epoch}.{i}-{number}-2001-Inbound.wav"}


def test_backfill_and_reports_at_once_answer_every_report_first_time(tmp_path):
    now = int(time.time())
    history = [cdr(i, now, "1") for i in range(HISTORY)]
    data = tmp_path / "pbx" / "data"
    data.mkdir(parents=True)
    with open(data / "cdrs.jsonl", "w") as out:  # what the PBX recorded while nobody listened
        for row in history:
            out.write(json.dumps(row) + "\n")
    sim = Sim(tmp_path / "pbx", "--utc-offset", "0")
    mount = None
    try:
        # backfill_interval=1: the periodic re-check writes all the time, too.
        mount = Mount(sim, tmp_path / "m", "prefetch=none", "backfill_interval=1")
        url = receiver_url(mount)
        pushed = [cdr(i, now, "2") for i in range(REPORTS)]
        answers: list[int | None] = []
        lock = threading.Lock()
        work = iter(pushed)

        def sender() -> None:
            with httpx.Client(timeout=30) as http:
                for row in work:
                    try:
                        status: int | None = http.post(url, json={"event": "NewCdr", **row},
                                                       headers={"Connection": "close"}).status_code
                    except httpx.HTTPError:
                        status = None
                    with lock:
                        answers.append(status)

        threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(answers) == REPORTS
        assert [a for a in answers if a != 200] == []

        def listed() -> set[str]:
            names: set[str] = set()
            for day in {row["timestart"][:10] for row in history + pushed}:
                try:
                    names |= set(os.listdir(mount.p(*day.split("-"))))
                except FileNotFoundError:
                    pass
            return names

        expected = {row["recording"] for row in history + pushed}
        wait_for(lambda: expected <= listed(), 60, what="every recording in the tree")
        assert mount.unmount() == 0
    finally:
        if mount is not None:
            mount.cleanup()
        sim.close()
