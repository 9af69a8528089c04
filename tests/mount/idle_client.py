"""A client that opens the simulator's event socket, subscribes and then says
nothing: how long until the PBX closes it (the idle limit the mount's heartbeat
must beat)."""

from __future__ import annotations

import json
import ssl
import time

import trio
import trio_websocket


def silent_socket_closed_after(sim) -> float:
    headers = {"User-Agent": "recfs-tests"}
    token = sim.http.post("/openapi/v1.0/get_token", headers=headers,
                          json={"username": sim.user, "password": sim.password}).json()
    access = token["access_token"]
    context = ssl.create_default_context(cafile=sim.cafile)

    async def main() -> float:
        url = sim.url.replace("https://", "wss://") + f"/openapi/v1.0/subscribe?access_token={access}"
        async with trio_websocket.open_websocket_url(
                url, ssl_context=context, extra_headers=[(b"User-Agent", b"recfs-tests")]) as ws:
            await ws.send_message(json.dumps({"topic_list": [30012]}))
            assert json.loads(await ws.get_message())["errcode"] == 0
            began = time.monotonic()
            with trio.fail_after(30):
                try:
                    while True:
                        await ws.get_message()
                except trio_websocket.ConnectionClosed:
                    return time.monotonic() - began
        raise AssertionError("unreachable")

    try:
        return trio.run(main)
    finally:
        sim.http.get("/openapi/v1.0/del_token", headers=headers,
                     params={"access_token": access})
