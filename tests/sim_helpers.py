"""Talking to the PBX simulator from tests: start it, log in, fetch, receive reports."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from recfs.sim import SimConfig, SimulatorInfo, run_simulator
from recfs.sim.tls import client_context

USER, PASSWORD = "api", "recfs-demo"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


async def start_sim(nursery: trio.Nursery, **overrides: Any) -> SimulatorInfo:
    settings: dict[str, Any] = {"calls_per_minute": 0, "report_retry_interval": 0.2}
    settings.update(overrides)
    return await nursery.start(run_simulator, SimConfig(**settings))


def http_client(info: SimulatorInfo, **kw: Any) -> httpx.AsyncClient:
    verify = client_context(info.ca_file) if info.ca_file else True
    kw.setdefault("timeout", 10)
    return httpx.AsyncClient(base_url=info.base_url, verify=verify, **kw)


async def login(client: httpx.AsyncClient, api: str = "v2.0.0", *, port: str = "8260", **extra: Any) -> str:
    """Log in on path version *api*; *extra* goes into the body (version, url, urltag)."""
    body = {"username": USER, "password": md5(PASSWORD), "port": port}
    body.update(extra)
    reply = (await client.post(f"/api/{api}/login", json=body)).json()
    assert reply["status"] == "Success", reply
    return reply["token"]


async def get_random(client: httpx.AsyncClient, token: str, name: str, version: str = "v2.0.0") -> str:
    reply = (
        await client.post(f"/api/{version}/recording/get_random", params={"token": token}, json={"recording": name})
    ).json()
    assert reply["status"] == "Success", reply
    return reply["random"]


async def download(
    client: httpx.AsyncClient, token: str, name: str, random: str, version: str = "v2.0.0"
) -> httpx.Response:
    return await client.get(
        f"/api/{version}/recording/download", params={"recording": name, "random": random, "token": token}
    )


async def make_call(client: httpx.AsyncClient, **fields: Any) -> dict[str, str]:
    reply = await client.post("/sim/call", json=fields)
    assert reply.status_code == 200, reply.text
    return reply.json()


@dataclass
class ReportReceiver:
    """A tiny report endpoint; answers the statuses in ``answers`` in turn, then 200."""

    answers: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0
    arrived: trio.Event = field(default_factory=trio.Event)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.received.append((headers, body))
        status = self.answers.pop(0) if self.answers else 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        self.arrived.set()

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while len(self.received) < count:
                self.arrived = trio.Event()
                await self.arrived.wait()

    async def start(self, nursery: trio.Nursery) -> int:
        config = HypercornConfig()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.errorlog = None
        binds = await nursery.start(serve, self, config)
        self.port = int(binds[0].rsplit(":", 1)[1])
        return self.port
