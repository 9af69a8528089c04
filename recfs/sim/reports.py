"""Pushing NewCdr reports to each session's receiver, the way the PBX does: plain
HTTP, one connection per event, re-sent until answered 200 or the token dies."""

from __future__ import annotations

import json
import logging

import httpx
import trio

from recfs.sim.state import CDR_FIELDS, Session, SimState

log = logging.getLogger(__name__)

REPORT_TIMEOUT = 10.0


def report_body(cdr: dict[str, str], report_version: str) -> bytes:
    """The JSON text of a NewCdr report in the session's format.

    v2 ("2.0.0"): key ``event``, every key present. v1: key ``action``, empty
    fields left out. Legacy (login without version): like v1, but with the
    oddities seen in the field — the destination trunk spelled ``dstrunkname`` and
    a repeated key — so receivers prove they parse leniently.
    """
    if report_version == "2.0.0":
        pairs = [("event", "NewCdr")] + [(k, cdr.get(k, "")) for k in CDR_FIELDS]
    else:
        pairs = [("action", "NewCdr")] + [(k, cdr[k]) for k in CDR_FIELDS if cdr.get(k)]
        if report_version == "":
            pairs = [("dstrunkname" if k == "desttrunkname" else k, v) for k, v in pairs]
            pairs.append(("action", "NewCdr"))
    # Built by hand: a dict cannot hold the repeated key.
    text = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v, ensure_ascii=False)}" for k, v in pairs) + "}"
    return text.encode("utf-8")


class Reporter:
    def __init__(self, state: SimState, *, retry_interval: float = 5.0, retry_limit: int = 120):
        self.state = state
        self.retry_interval = retry_interval
        self.retry_limit = retry_limit

    async def _post_once(self, url: str, body: bytes) -> int | None:
        # A fresh client per attempt: a new TCP connection per event, nothing pooled.
        async with httpx.AsyncClient(timeout=REPORT_TIMEOUT, trust_env=False) as client:
            try:
                response = await client.post(
                    url,
                    content=body,
                    headers={"Content-Type": "application/json", "User-Agent": "WebAPI"},
                )
            except httpx.HTTPError as error:
                log.info("report to %s failed: %s", url, type(error).__name__)
                return None
            return response.status_code

    async def deliver(self, session: Session, cdr: dict[str, str]) -> None:
        body = report_body(cdr, session.report_version)
        for attempt in range(self.retry_limit + 1):
            if attempt:
                await trio.sleep(self.retry_interval)
            if not self.state.is_alive(session):
                log.info("report %s dropped: session ended", cdr.get("callid"))
                return
            url = session.target.url  # a heartbeat may have moved it
            self.state.stats.reports_sent += 1
            status = await self._post_once(url, body)
            if status == 200:
                self.state.stats.reports_acked += 1
                self.state.touch(session)
                return
            if status is not None:
                log.info("report %s to %s answered %d", cdr.get("callid"), url, status)
        log.warning("report %s to %s given up after %d attempts", cdr.get("callid"), session.target.url, self.retry_limit + 1)
